package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// TestServeDisk serves a qcow2 image with `vio serve-disk`, writes a
// sector through vio's vhost-user front-end, stops the daemon and reads
// the sector back from the image.
func TestServeDisk(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	if out, err := runImage(t, "create", img, "4M"); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "vu.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := serveDiskCommand()
	var out bytes.Buffer
	c.SetOut(&out)
	c.SetErr(&out)
	c.SetArgs([]string{"--socket", sock, "--disk", "path=" + img + ",format=qcow2,serial=served", "--num-queues", "2"})
	done := make(chan error, 1)
	go func() { done <- c.ExecuteContext(ctx) }()

	var f *vhostuser.Frontend
	for deadline := time.Now().Add(10 * time.Second); ; {
		var err error
		if f, err = vhostuser.Dial(sock, 5*time.Second); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve-disk exited: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("cannot reach the back-end: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // polling for the socket to appear
	}
	defer f.Close()
	if _, _, err := f.Negotiate(virtio.FeatureVersion1, vhostuser.ProtocolMQ|vhostuser.ProtocolReplyAck|vhostuser.ProtocolConfig); err != nil {
		t.Fatal(err)
	}
	if n, err := f.GetQueueNum(); err != nil || n != 2 {
		t.Fatalf("GET_QUEUE_NUM %d %v", n, err)
	}
	cfg, err := f.GetConfig(0, 8)
	if err != nil || binary.LittleEndian.Uint64(cfg) != (4<<20)/512 {
		t.Fatalf("capacity: %x %v", cfg, err)
	}
	mem, err := memory.NewWithOptions([]memory.Layout{{GPA: 0, Size: 1 << 20}}, memory.Options{Backing: memory.Memfd})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if err := f.SetMemTable(mem); err != nil {
		t.Fatal(err)
	}
	drv, err := queuetest.New(mem, 0x1000, 16, 64<<10, false)
	if err != nil {
		t.Fatal(err)
	}
	kickFD, _ := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	callFD, _ := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	defer unix.Close(kickFD)
	defer unix.Close(callFD)
	for _, err := range []error{
		f.SetVringNum(0, 16), f.SetVringBase(0, 0), f.SetVringAddrGPA(0, drv.Config()),
		f.SetVringKick(0, kickFD), f.SetVringCall(0, callFD), f.SetVringEnable(0, true),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	hdr := make([]byte, 16)
	binary.LittleEndian.PutUint32(hdr, 1) // VIRTIO_BLK_T_OUT
	binary.LittleEndian.PutUint64(hdr[8:], 7)
	data := bytes.Repeat([]byte("served by vio.  "), 32)
	if _, err := drv.Add([][]byte{hdr, data}, []uint32{1}); err != nil {
		t.Fatal(err)
	}
	unix.Write(kickFD, binary.LittleEndian.AppendUint64(nil, 1))
	pfd := []unix.PollFd{{Fd: int32(callFD), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 10000); n != 1 || err != nil {
		t.Fatalf("no completion: %d %v", n, err)
	}
	u, ok, err := drv.GetUsed()
	if err != nil || !ok || len(u.Data) != 1 || u.Data[0] != 0 {
		t.Fatalf("write: %+v %v %v", u, ok, err)
	}
	f.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve-disk: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "as vhost-user-blk on "+sock) {
		t.Fatalf("no start line:\n%s", out.String())
	}
	be, err := image.Open(img, image.OpenOptions{Format: image.Qcow2, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	got := make([]byte, 512)
	if _, err := be.ReadAt(got, 7*512); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("sector 7 of the image: %q", got[:32])
	}
}

func TestServeDiskRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "vu.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--disk", "path=x"}, "--socket PATH is required"},
		{[]string{"--socket", sock}, "--disk SPEC is required"},
		{[]string{"--socket", sock, "--disk", "path=x,iface=ide"}, "a served disk is virtio-blk"},
		{[]string{"--socket", sock, "--disk", "path=x", "--num-queues", "0"}, "--num-queues 0"},
		{[]string{"--socket", dir, "--disk", "path=x"}, "already exists"},
	} {
		cmd := serveDiskCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(c.args)
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want an error with %q", c.args, err, c.want)
		}
	}
}
