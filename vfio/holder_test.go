package vfio

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeProc lays out /proc as the kernel does for the holder scan: a
// directory per pid with fd links and a NUL-separated cmdline.
func fakeProc(t *testing.T) string {
	t.Helper()
	proc := t.TempDir()
	process := func(pid int, cmdline string, fds ...string) {
		d := filepath.Join(proc, strconv.Itoa(pid))
		must(t, os.MkdirAll(filepath.Join(d, "fd"), 0o755))
		must(t, os.WriteFile(filepath.Join(d, "cmdline"), []byte(cmdline), 0o644))
		for i, target := range fds {
			must(t, os.Symlink(target, filepath.Join(d, "fd", strconv.Itoa(i+3))))
		}
	}
	process(100, "/usr/bin/vio\x00run\x00--api-socket\x00/run/vm-a.sock\x00--device\x00path=/sys/bus/pci/devices/0000:01:00.1\x00",
		"/dev/null", "/dev/vfio/vfio", "/dev/vfio/12", "/dev/vfio/12")
	process(200, "vio\x00run\x00--api-socket=/run/vm-b.sock\x00", "/dev/vfio/13")
	process(300, "qemu-system-x86_64\x00-m\x001G\x00", "/dev/vfio/14", "socket:[123]")
	process(400, "", "/dev/vfio/15")                                 // a kernel thread's empty cmdline
	must(t, os.MkdirAll(filepath.Join(proc, "self"), 0o755))         // not a pid
	must(t, os.WriteFile(filepath.Join(proc, "uptime"), nil, 0o644)) // not a directory
	return proc
}

func TestGroupHolders(t *testing.T) {
	proc := fakeProc(t)
	got := GroupHolders(proc, []string{"12", "13", "14", "15", "16"}, -1)
	want := map[string]string{
		"12": "VM /run/vm-a.sock (pid 100)", // one entry for two fds
		"13": "VM /run/vm-b.sock (pid 200)",
		"14": "VM qemu-system-x86_64 (pid 300)",
		"15": "VM pid 400 (pid 400)",
	}
	for g, w := range want {
		if len(got[g]) != 1 || got[g][0].String() != w {
			t.Errorf("group %s: holders %v, want [%s]", g, got[g], w)
		}
	}
	if len(got["16"]) != 0 {
		t.Errorf("group 16 is held by nobody, got %v", got["16"])
	}
	if hs := GroupHolders(proc, []string{"12"}, 100)["12"]; len(hs) != 0 {
		t.Errorf("the skipped pid was reported: %v", hs)
	}
	if hs := GroupHolders(proc, []string{"1"}, -1)["1"]; len(hs) != 0 {
		t.Errorf("/dev/vfio/1 is not /dev/vfio/12's prefix match: %v", hs)
	}
}

// TestInUse: opening a group another vio holds fails with one sentence
// naming that VM.
func TestInUse(t *testing.T) {
	old := procRoot
	procRoot = fakeProc(t)
	t.Cleanup(func() { procRoot = old })
	err := inUse("0000:01:00.1", "12", unix.EBUSY)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "0000:01:00.1 is in use by VM /run/vm-a.sock (pid 100): stop that VM first") {
		t.Errorf("got %v", err)
	}
	err = inUse("0000:01:00.5", "99", unix.EBUSY)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "held by another process") {
		t.Errorf("no holder visible: %v", err)
	}
	if strings.Count(err.Error(), ".") > 3 || strings.Contains(err.Error(), "\n") {
		t.Errorf("not one sentence: %q", err)
	}
}

func FuzzNameFromCmdline(f *testing.F) {
	f.Add([]byte("vio\x00run\x00--api-socket\x00/run/a.sock\x00"), 5)
	f.Add([]byte("--api-socket"), 1)
	f.Add([]byte("--api-socket=\x00\x00"), 1)
	f.Add([]byte(""), 0)
	f.Fuzz(func(t *testing.T, b []byte, pid int) {
		n := NameFromCmdline(b, pid)
		if n == "" {
			t.Errorf("empty name for %q", b)
		}
	})
}
