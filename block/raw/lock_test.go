package raw

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	// qemu-nbd holds the image writable until killed.
	sock := filepath.Join(dir, "nbd.sock")
	cmd := exec.Command("qemu-nbd", "-k", sock, "-f", "raw", path)
	if err := cmd.Start(); err != nil {
		t.Skipf("qemu-nbd: %v", err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	// qemu-nbd takes its locks when it opens the image, before it creates
	// the socket: wait for the socket.
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i == 500 {
			t.Fatal("qemu-nbd did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := Open(path, Options{Lock: true}); !errors.Is(err, ErrLocked) {
		t.Errorf("vio opened for writing an image qemu-nbd serves: %v", err)
	}
}
