package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/raw"
)

func needQemu(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (apt-get install qemu-utils): skipping oracle test")
	}
}

func qemu(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// qemuCheck runs qemu-img check and fails on corruption; leaks fail too
// unless allowed.
func qemuCheck(t testing.TB, path string, allowLeaks bool) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return
	}
	out, err := exec.Command("qemu-img", "check", path).CombinedOutput()
	if err == nil {
		return
	}
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 3 && allowLeaks {
		return // leaked clusters only
	}
	t.Fatalf("qemu-img check %s: %v\n%s", path, err, out)
}

func openRaw(t testing.TB, path string, ro bool) *raw.File {
	t.Helper()
	f, err := raw.Open(path, raw.Options{ReadOnly: ro, Cache: raw.Unsafe})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func createRaw(t testing.TB, path string) *raw.File {
	t.Helper()
	f, err := raw.Create(path, 0, raw.Options{Cache: raw.Unsafe})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// opener opens backing files relative to dir, raw or qcow2 by magic.
func opener(dir string) func(name, format string) (block.Backend, error) {
	var open func(name, format string) (block.Backend, error)
	open = func(name, format string) (block.Backend, error) {
		if !filepath.IsAbs(name) {
			name = filepath.Join(dir, name)
		}
		f, err := raw.Open(name, raw.Options{ReadOnly: true})
		if err != nil {
			return nil, err
		}
		head := make([]byte, 4)
		f.ReadAt(head, 0)
		if format == "qcow2" || (format == "" && Probe(head)) {
			img, err := Open(f, Options{ReadOnly: true, OpenBacking: opener(filepath.Dir(name))})
			if err != nil {
				f.Close()
				return nil, err
			}
			return img, nil
		}
		return f, nil
	}
	return open
}

func create(t testing.TB, path string, size int64, copts CreateOptions) *Image {
	t.Helper()
	img, err := Create(createRaw(t, path), size, copts, Options{OpenBacking: opener(filepath.Dir(path))})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func openImg(t testing.TB, path string, ro bool) *Image {
	t.Helper()
	img, err := Open(openRaw(t, path, ro), Options{ReadOnly: ro, OpenBacking: opener(filepath.Dir(path))})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func factory(copts CreateOptions) blocktest.Factory {
	return func(t *testing.T, size int64) block.Backend {
		path := filepath.Join(t.TempDir(), "disk.qcow2")
		img := create(t, path, size, copts)
		t.Cleanup(func() { qemuCheck(t, path, false) })
		return img
	}
}

func TestConformance(t *testing.T) {
	for _, c := range []struct {
		name  string
		copts CreateOptions
	}{
		{"default", CreateOptions{}},
		{"v2", CreateOptions{Version: 2}},
		{"512B-clusters", CreateOptions{ClusterSize: 512}},
		{"4K-clusters-refcount1", CreateOptions{ClusterSize: 4096, RefcountBits: 1}},
		{"refcount64", CreateOptions{ClusterSize: 2048, RefcountBits: 64}},
	} {
		t.Run(c.name, func(t *testing.T) {
			blocktest.Run(t, factory(c.copts))
			blocktest.RunReopen(t, func(t *testing.T, size int64) func() (block.Backend, error) {
				path := filepath.Join(t.TempDir(), "disk.qcow2")
				if err := create(t, path, size, c.copts).Close(); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { qemuCheck(t, path, false) })
				return func() (block.Backend, error) {
					return Open(openRaw(t, path, false), Options{})
				}
			})
		})
	}
}

// TestConformanceDirect runs the suite on images whose file is opened
// with O_DIRECT (cache=none), so that metadata writes of 512-byte sectors
// go through raw's bounce buffers.
func TestConformanceDirect(t *testing.T) {
	blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
		path := filepath.Join(t.TempDir(), "direct.qcow2")
		f, err := raw.Create(path, 0, raw.Options{Cache: raw.None})
		if err != nil {
			t.Skipf("O_DIRECT unavailable: %v", err)
		}
		img, err := Create(f, size, CreateOptions{ClusterSize: 4096}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { qemuCheck(t, path, false) })
		return img
	})
}

func TestCreateMatchesQemu(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "a.qcow2")
	img := create(t, path, 10<<20, CreateOptions{})
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, path, false)
	out := qemu(t, "qemu-img", "info", path)
	for _, want := range []string{"virtual size: 10 MiB", "cluster_size: 65536", "compat: 1.1", "refcount bits: 16"} {
		if !strings.Contains(out, want) {
			t.Errorf("qemu-img info lacks %q:\n%s", want, out)
		}
	}
	ref := filepath.Join(dir, "ref.raw")
	os.WriteFile(ref, bytes.Repeat([]byte{0}, 10<<20), 0o644)
	qemu(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", path, ref)
}

// TestHeaderBits checks that the corrupt and dirty bits keep an image
// from being written, and that unknown autoclear bits are cleared.
func TestHeaderBits(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bits.qcow2")
	create(t, path, 1<<20, CreateOptions{}).Close()
	setBits := func(incompat, autoclear uint64) {
		f := openRaw(t, path, false)
		defer f.Close()
		b := make([]byte, 8)
		be.PutUint64(b, incompat)
		f.WriteAt(b, 72)
		be.PutUint64(b, autoclear)
		f.WriteAt(b, 88)
	}
	for _, c := range []struct {
		bit  uint64
		want error
	}{{incompatCorrupt, ErrCorrupt}, {incompatDirty, ErrUnsupported}} {
		setBits(c.bit, 0)
		if _, err := Open(openRaw(t, path, false), Options{}); !errors.Is(err, c.want) {
			t.Errorf("bit %#x: writable open: %v, want %v", c.bit, err, c.want)
		}
		img, err := Open(openRaw(t, path, true), Options{ReadOnly: true})
		if err != nil {
			t.Errorf("bit %#x: read-only open: %v", c.bit, err)
		} else {
			img.Close()
		}
	}
	setBits(1<<20, 0)
	if _, err := Open(openRaw(t, path, true), Options{ReadOnly: true}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("unknown incompatible bit: %v", err)
	}
	setBits(0, 1)
	openImg(t, path, false).Close()
	f := openRaw(t, path, true)
	b := make([]byte, 8)
	f.ReadAt(b, 88)
	f.Close()
	if be.Uint64(b) != 0 {
		t.Errorf("autoclear bits %#x survived a writable open", be.Uint64(b))
	}
	qemuCheck(t, path, false)
}

// TestOnBlockDevice keeps an image on a loop block device, which cannot
// grow: allocation must stay within it and report a full device cleanly.
func TestOnBlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	backing := filepath.Join(t.TempDir(), "dev")
	os.WriteFile(backing, nil, 0o644)
	os.Truncate(backing, 2<<20)
	out, err := exec.Command("losetup", "-f", "--show", backing).CombinedOutput()
	if err != nil {
		t.Skipf("cannot attach a loop device: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()
	f, err := raw.Open(dev, raw.Options{})
	if err != nil {
		t.Fatal(err)
	}
	img, err := Create(f, 8<<20, CreateOptions{ClusterSize: 4096}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := bytes.Repeat([]byte{3}, 4096)
	var full error
	n := int64(0)
	for ; n < 8<<20; n += 4096 {
		if _, err := img.WriteAt(p, n); err != nil {
			full = err
			break
		}
	}
	if full == nil || n < 1<<20 {
		t.Fatalf("wrote %d bytes into a 2 MiB device, then %v", n, full)
	}
	got := make([]byte, n)
	if _, err := img.ReadAt(got, 0); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{3}, int(n))) {
		t.Fatalf("read back: %v", err)
	}
	if err := img.Close(); err != nil {
		t.Fatalf("Close after the device filled up: %v", err)
	}
	qemuCheck(t, dev, false)
	f, _ = raw.Open(dev, raw.Options{ReadOnly: true})
	img, err = Open(f, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.ReadAt(got, 0); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{3}, int(n))) {
		t.Fatalf("read back after reopening: %v", err)
	}
}

// slowBacking blocks backing reads until released.
type slowBacking struct {
	*blocktest.Mem
	entered chan struct{}
	release chan struct{}
}

func (s *slowBacking) ReadAt(p []byte, off int64) (int, error) {
	s.entered <- struct{}{}
	<-s.release
	return s.Mem.ReadAt(p, off)
}

// TestCopyOnWriteDoesNotBlockOthers: while a write waits for its
// copy-on-write read from a (slow, say remote) backing file, I/O to other
// clusters proceeds.
func TestCopyOnWriteDoesNotBlockOthers(t *testing.T) {
	base := blocktest.NewMem(1 << 20)
	base.WriteAt(bytes.Repeat([]byte{7}, 1<<20), 0)
	slow := &slowBacking{Mem: base, entered: make(chan struct{}), release: make(chan struct{})}
	img, err := Create(keepOpen{blocktest.NewMem(0)}, 1<<20, CreateOptions{ClusterSize: 4096, BackingFile: "base"},
		Options{OpenBacking: func(string, string) (block.Backend, error) { return slow, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(make([]byte, 4096), 8192); err != nil { // allocated, no backing read
		t.Fatal(err)
	}
	done := make(chan error)
	go func() {
		_, err := img.WriteAt([]byte{1, 2, 3}, 100) // partial: needs the backing cluster
		done <- err
	}()
	<-slow.entered // the writer is inside its copy-on-write read
	got := make([]byte, 4096)
	other := make(chan error)
	go func() {
		if _, err := img.ReadAt(got, 8192); err != nil || !bytes.Equal(got, make([]byte, 4096)) {
			other <- fmt.Errorf("read of another cluster during the copy: %v", err)
			return
		}
		_, err := img.WriteAt([]byte{9}, 8192)
		other <- err
	}()
	select {
	case err := <-other:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second): // a guard against hanging, not a wait
		t.Fatal("I/O to another cluster waited for the copy-on-write read")
	}
	go func() { // later backing reads pass straight through
		for range slow.entered {
		}
	}()
	close(slow.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	img.ReadAt(got[:200], 0)
	if got[99] != 7 || got[100] != 1 || got[102] != 3 || got[103] != 7 {
		t.Errorf("after the copy: %v", got[98:104])
	}
}
