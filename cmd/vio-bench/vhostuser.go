package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// benchVhostUser is vio's disk back-end under two front-ends: the same
// workloads on the bench disk served by `vio serve-disk` to QEMU's
// vhost-user-blk-pci and to vio's own vhost-user front-end, against each
// VMM's own virtio-blk on the same file. serve-disk is started for each
// vhost-user run and stopped (SIGTERM: it flushes the disk and must exit
// 0) after it, so that the file is free for the other setups, which
// open it themselves.
func benchVhostUser(e *env, b *budget, rounds, memMiB int) error {
	return runIOBench(e, b, rounds, memMiB, func(disk, tools, initrd string) ([]setup, string) {
		sock := e.work + "/serve-disk.sock"
		serve := func() (func() error, error) {
			return startServeDisk(e.vio, []string{"serve-disk", "--socket", sock, "--disk", "path=" + disk + ",format=raw"}, sock)
		}
		mem := strconv.Itoa(memMiB) + "M"
		qemuTools := []string{"-drive", "file=" + tools + ",if=none,id=d1,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=d1"}
		qemuNet := []string{"-netdev", "tap,id=n0,ifname=" + benchTap + ",script=no,downscript=no,vhost=off", "-device", "virtio-net-pci,netdev=n0"}
		return []setup{
			// The bench disk before the tools disk in every setup: the
			// guest takes the last virtio disk for its tools.
			{name: "qemu-vu", start: serve, argv: qemuIOArgs(e, memMiB, initrd, join(
				// The back-end maps guest RAM: a shared memfd.
				[]string{"-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on", "-machine", "memory-backend=mem",
					"-chardev", "socket,id=c0,path=" + sock, "-device", "vhost-user-blk-pci,chardev=c0,num-queues=1"},
				qemuTools, qemuNet)...)},
			{name: "vio-vu", start: serve, argv: sharedMemory(vioIOArgs(e, memMiB, initrd,
				"--disk", "vhost_user=on,socket="+sock, "--disk", "path="+tools+",readonly=on", "--net", "tap="+benchTap))},
			{name: "vio", argv: vioIOArgs(e, memMiB, initrd, "--disk", "path="+disk+",format=raw", "--disk", "path="+tools+",readonly=on", "--net", "tap="+benchTap)},
			// Last: the reference of the ratios, QEMU's own virtio-blk
			// (aio=threads, its default) on the same file.
			{name: "qemu", argv: qemuIOArgs(e, memMiB, initrd, join(
				[]string{"-drive", "file=" + disk + ",if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0"},
				qemuTools, qemuNet)...)},
		}, "-vu: vhost-user-blk on vio serve-disk of the bench file (one queue), the VMM's front-end; else the VMM's own virtio-blk on it; virtio-net on TAP, QEMU without vhost"
	})
}

func join(parts ...[]string) []string {
	var all []string
	for _, p := range parts {
		all = append(all, p...)
	}
	return all
}

// sharedMemory makes vio's guest RAM a memfd a back-end can map.
func sharedMemory(argv []string) []string {
	for i, a := range argv[:len(argv)-1] {
		if a == "--memory" {
			argv[i+1] = "size=" + argv[i+1] + ",shared=on"
		}
	}
	return argv
}

// startServeDisk starts vio with args (serve-disk and its flags) and
// returns once it listens on every one of socks; stop sends it SIGTERM
// and waits for it to flush and exit.
func startServeDisk(vio string, args []string, socks ...string) (stop func() error, err error) {
	for _, s := range socks {
		os.Remove(s) // a stale one from a run that died; serve-disk refuses it
	}
	cmd := exec.Command(vio, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("vio serve-disk: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// Neither front-end may find the socket missing: QEMU without
	// reconnect= fails at once.
	for _, s := range socks {
		if err := waitListening(s, exited, 30*time.Second); err != nil {
			cmd.Process.Kill()
			<-exited
			return nil, fmt.Errorf("vio serve-disk: %w", err)
		}
	}
	return func() error {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				return fmt.Errorf("vio serve-disk, stopped with SIGTERM: %w", err)
			}
			return nil
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
			return errors.New("vio serve-disk did not exit within 30 s of SIGTERM")
		}
	}, nil
}

// waitListening returns once a UNIX socket listens at path, as the
// kernel's table of UNIX sockets says: connecting to find out would take
// serve-disk's one front-end slot.
func waitListening(path string, exited <-chan error, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if ok, err := unixListening(path); err != nil {
			return err
		} else if ok {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("exited before listening on %s: %v", path, err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %s after %v", path, timeout)
		}
	}
}

// soAcceptCon is the flag /proc/net/unix shows for a listening socket.
const soAcceptCon = 0x10000

// unixListening reports whether /proc/net/unix has a listening socket
// bound to path ("Num RefCount Protocol Flags Type St Inode Path").
func unixListening(path string) (bool, error) {
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 8 || fl[7] != path {
			continue
		}
		if flags, err := strconv.ParseUint(fl[3], 16, 32); err == nil && flags&soAcceptCon != 0 {
			return true, nil
		}
	}
	return false, sc.Err()
}
