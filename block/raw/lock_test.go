package raw

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestLocksBetweenVioOpens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.raw")
	os.WriteFile(path, make([]byte, 4096), 0o644)
	r1, err := Open(path, Options{ReadOnly: true, Lock: true})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Open(path, Options{ReadOnly: true, Lock: true})
	if err != nil {
		t.Fatalf("two readers: %v", err)
	}
	if _, err := Open(path, Options{Lock: true}); !errors.Is(err, ErrLocked) {
		t.Errorf("writer while read: %v, want ErrLocked", err)
	}
	r1.Close()
	r2.Close()
	w, err := Open(path, Options{Lock: true})
	if err != nil {
		t.Fatalf("writer after readers closed: %v", err)
	}
	if _, err := Open(path, Options{ReadOnly: true, Lock: true}); !errors.Is(err, ErrLocked) {
		t.Errorf("reader while written: %v, want ErrLocked", err)
	}
	if f, err := Open(path, Options{ReadOnly: true}); err != nil {
		t.Errorf("an unlocked open is not refused: %v", err)
	} else {
		f.Close()
	}
	w.Close()
}

// TestLocksAgainstQemu checks the interlock with QEMU's tools both ways.
func TestLocksAgainstQemu(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io not installed: skipping lock interop test")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "l.raw")
	os.WriteFile(path, make([]byte, 1<<20), 0o644)
	w, err := Open(path, Options{Lock: true})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write 0 512", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "lock") {
		t.Errorf("qemu-io wrote an image vio holds: %v\n%s", err, out)
	}
	w.Close()
	// qemu-nbd holds the image writable until killed. With --fork its
	// parent exits only once the server is running with the image open
	// (and locked), which is the moment to try.
	sock := filepath.Join(dir, "nbd.sock")
	pidFile := filepath.Join(dir, "nbd.pid")
	if out, err := exec.Command("qemu-nbd", "--fork", "--pid-file", pidFile, "-k", sock, "-f", "raw", path).CombinedOutput(); err != nil {
		t.Fatalf("qemu-nbd: %v\n%s", err, out)
	}
	defer func() {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			t.Errorf("qemu-nbd left no pid file: %v", err)
			return
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	}()
	if _, err := Open(path, Options{Lock: true}); !errors.Is(err, ErrLocked) {
		t.Errorf("vio opened for writing an image qemu-nbd serves: %v", err)
	}
}
