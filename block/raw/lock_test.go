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

// openRacing opens path for writing with hook run inside lock(), between
// taking the lock bytes and testing for conflicts: the race window.
func openRacing(t *testing.T, path string, hook func()) (*File, error) {
	t.Helper()
	armed := true
	lockHook = func(*File) {
		if armed {
			armed = false // the racer's own open runs unhooked
			hook()
		}
	}
	defer func() { lockHook = nil }()
	return Open(path, Options{Lock: true})
}

// TestLockRaceOneWriter forces a second writer's whole open into the
// window between the first writer's locking and its check. Checking before
// locking (the old order) let both in; now exactly one gets the image.
func TestLockRaceOneWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "race.raw")
	os.WriteFile(path, make([]byte, 4096), 0o644)
	var b *File
	var berr error
	a, aerr := openRacing(t, path, func() { b, berr = Open(path, Options{Lock: true}) })
	won := 0
	for _, f := range []*File{a, b} {
		if f != nil {
			won++
			defer f.Close()
		}
	}
	if won != 1 {
		t.Fatalf("%d writers got the image (first: %v, second: %v), want exactly one", won, aerr, berr)
	}
	if aerr != nil || !errors.Is(berr, ErrLocked) {
		t.Errorf("first opener (locks already taken): %v; racer: %v, want it refused with ErrLocked", aerr, berr)
	}
}

// TestLockRaceInterleaved interleaves the steps of two writers: A takes
// its bytes, B takes its bytes, A checks (and must back off), B checks.
// Again exactly one gets the image: B, since A's refusal released A's
// bytes before B looked.
func TestLockRaceInterleaved(t *testing.T) {
	path := filepath.Join(t.TempDir(), "race.raw")
	os.WriteFile(path, make([]byte, 4096), 0o644)
	// B is opened by hand so that its check can be delayed: take its
	// bytes now (as lock() does first), check later.
	fb, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := &File{f: fb, fd: int(fb.Fd())}
	var bTook error
	a, aerr := openRacing(t, path, func() {
		// B takes every byte a writer takes, then pauses.
		for _, off := range []int64{100, 101, 102, 103, 201, 203} {
			if err := b.setLock(off); err != nil {
				bTook = err
			}
		}
	})
	if bTook != nil {
		t.Fatal(bTook)
	}
	if a != nil {
		a.Close()
		t.Fatal("A got the image although B held the write bytes when A checked")
	}
	if !errors.Is(aerr, ErrLocked) {
		t.Fatalf("A: %v, want ErrLocked", aerr)
	}
	// B's check, now that A has backed off.
	for _, off := range []int64{200, 201, 202, 203, 101, 103} {
		if held, err := b.lockHeld(off); err != nil || held {
			t.Fatalf("B finds byte %d held (%v, %v) after A was refused", off, held, err)
		}
	}
	// And B really holds the image against a later writer.
	if c, err := Open(path, Options{Lock: true}); !errors.Is(err, ErrLocked) {
		if c != nil {
			c.Close()
		}
		t.Errorf("a third writer while B holds the bytes: %v, want ErrLocked", err)
	}
	fb.Close()
}
