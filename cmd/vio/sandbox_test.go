package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/sandbox"
)

// TestSandboxBitesInVio: vio serve confines itself before its first
// request; VIO_SANDBOX_SELFTEST then makes it call sysfs(2), which the
// filter refuses, and vio stops with exit status 2 and a report naming
// the call (0x8b in rax) instead of serving.
func TestSandboxBitesInVio(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "serve", "--api-socket", sock, "-v", "--sandbox=on")
	cmd.Env = append(os.Environ(), "VIO_TEST_AS_VIO=1", selfTestEnv+"=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("vio kept running after the forbidden call:\n%s", out.String())
	}
	s := out.String()
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(s, "SIGSYS: bad system call") || !strings.Contains(s, "rax    0x8b\n") {
		t.Fatalf("exit status %d, want 2 with the report of sysfs:\n%s", cmd.ProcessState.ExitCode(), s)
	}
	if strings.Contains(s, "let it through") || !strings.Contains(s, `msg="sandbox on`) {
		t.Fatalf("output:\n%s", s)
	}
}

// TestVMPolicy: the rules name the VM's files with the access it uses
// them with, the files it holds open (as a backing file is), the
// directories of its sockets, and what --sandbox-allow adds.
func TestVMPolicy(t *testing.T) {
	dir := t.TempDir()
	name := func(n string) string { return filepath.Join(dir, n) }
	for _, f := range []string{"k", "i", "rw.img", "ro.img", "backing.img", "serial.log", "disk.key", "user-data", "meta-data"} {
		if err := os.WriteFile(name(f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	backing, err := os.Open(name("backing.img")) // held open, as qcow2 holds its backing file
	if err != nil {
		t.Fatal(err)
	}
	defer backing.Close()
	cfg := config.Default()
	cfg.Payload.Kernel, cfg.Payload.Initramfs = name("k"), name("i")
	cfg.Disks = []config.Disk{{Path: name("rw.img")}, {Path: name("ro.img"), Readonly: true}, {Path: "nbd+unix:///x?socket=/run/nbd.sock"}}
	enc, err := config.ParseDisk("path=" + name("enc.img") + ",encrypt=on,key_file=" + name("disk.key"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Disks = append(cfg.Disks, enc, config.Disk{VhostUser: true, VhostSocket: filepath.Join(dir, "vu", "d.sock")})
	cfg.Serial = config.Console{Mode: config.ModeFile, File: name("serial.log")}
	cfg.Console = config.Console{Mode: config.ModeSocket, Socket: filepath.Join(dir, "cons", "c.sock")}
	cfg.CloudInit = &config.CloudInit{UserData: name("user-data"), MetaData: name("meta-data")}
	p := vmPolicy(cfg, filepath.Join(dir, "api", "api.sock"), observeFlags{}, []string{name("snaps")})
	got := map[string]sandbox.Access{}
	for _, r := range p.Rules {
		got[r.Path] |= r.Access
	}
	want := map[string]sandbox.Access{
		name("k"):           sandbox.Read,
		name("i"):           sandbox.Read,
		name("rw.img"):      sandbox.Read | sandbox.Write,
		name("ro.img"):      sandbox.Read,
		name("backing.img"): sandbox.Read,
		name("serial.log"):  sandbox.Write,
		name("disk.key"):    sandbox.Read, // read again when a reboot reopens the disk
		name("user-data"):   sandbox.Read, // the cloud-init seed is built again at a reboot
		name("meta-data"):   sandbox.Read,
		name("cons"):        sandbox.Create,
		name("vu"):          sandbox.Create, // a vhost-user back-end's socket, made again when it restarts
		name("api"):         sandbox.Create,
		name("snaps"):       sandbox.Read | sandbox.Write | sandbox.Create,
		"/dev/kvm":          sandbox.Read | sandbox.Write,
	}
	for path, a := range want {
		if got[path] != a {
			t.Errorf("%s: access %v, want %v", path, got[path], a)
		}
	}
	for path := range got {
		if strings.Contains(path, "nbd") {
			t.Errorf("an NBD URI became a path rule: %s", path)
		}
	}
	if p.NoLandlock {
		t.Error("vio run's policy leaves the filesystem open")
	}
	if sp := servePolicy("/run/a.sock", observeFlags{}, nil); !sp.NoLandlock {
		t.Error("vio serve without --sandbox-allow confines the filesystem to nothing")
	}
}
