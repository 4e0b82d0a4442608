package initramfs

import (
	"bytes"
	"compress/gzip"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/viovmm/vio/lab/assets"
)

// readCpio parses a newc archive back into name -> (mode, data).
func readCpio(t *testing.T, gz []byte) map[string]entry {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]entry{}
	pad := func(n int) int { return (4 - n%4) % 4 }
	for off := 0; ; {
		if string(raw[off:off+6]) != "070701" {
			t.Fatalf("bad magic at %d", off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(raw[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(v)
		}
		mode, size, nameLen := field(1), field(6), field(11)
		name := string(raw[off+110 : off+110+nameLen-1])
		off += 110 + nameLen
		off += pad(110 + nameLen)
		data := raw[off : off+size]
		off += size + pad(size)
		if name == "TRAILER!!!" {
			return out
		}
		out[name] = entry{mode: uint32(mode), data: data}
	}
}

func TestArchive(t *testing.T) {
	b := New()
	b.File("/etc/hello", []byte("hi"), 0o644)
	b.Symlink("/bin/sh", "/bin/busybox")
	b.File("/prog", []byte("#!/bin/sh\n"), 0o644)
	b.Init("/prog", "a b", "it's")
	var buf bytes.Buffer
	if err := b.Write(&buf); err != nil {
		t.Fatal(err)
	}
	got := readCpio(t, buf.Bytes())
	if e := got["etc/hello"]; string(e.data) != "hi" || e.mode != modeFile|0o644 {
		t.Errorf("etc/hello: %+v", e)
	}
	if e := got["etc"]; e.mode != modeDir|0o755 {
		t.Errorf("parent directory missing: %+v", e)
	}
	if e := got["bin/sh"]; string(e.data) != "/bin/busybox" || e.mode&0o170000 != modeSymlink {
		t.Errorf("symlink: %+v", e)
	}
	init := string(got["init"].data)
	if !strings.Contains(init, `exec '/prog' 'a b' 'it'\''s'`) {
		t.Errorf("init does not exec the program with its quoted arguments:\n%s", init)
	}
	if New().Write(io.Discard) == nil {
		t.Error("an archive without /init was written")
	}
}

// TestModuleOrder resolves real Debian modules, when the lab's assets have
// been fetched: every module comes after what it depends on, soft
// pre-dependencies included, and post-dependencies after.
func TestModuleOrder(t *testing.T) {
	a, err := assets.Load(assets.DefaultDir())
	if err != nil {
		t.Skipf("lab assets not fetched (go run ./cmd/vio-lab assets): %v", err)
	}
	m, err := OpenModules(a.ModulesDir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := m.Resolve("kvm-amd", "ext4", "vfio_pci")
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, f := range files {
		pos[strings.TrimSuffix(filepath.Base(f), ".ko")] = i + 1
	}
	for _, c := range [][2]string{
		{"kvm", "kvm-amd"}, {"irqbypass", "kvm"}, {"ccp", "kvm-amd"},
		{"jbd2", "ext4"}, {"mbcache", "ext4"}, {"crc32c_generic", "ext4"},
		{"vfio", "vfio-pci-core"}, {"vfio", "vfio_iommu_type1"},
	} {
		before, after := pos[c[0]], pos[c[1]]
		if before == 0 || after == 0 || before > after {
			t.Errorf("%s (at %d) must load before %s (at %d); order: %v", c[0], before, c[1], after, files)
		}
	}
	if _, err := m.Resolve("no-such-module"); err == nil {
		t.Error("an unknown module was resolved")
	}
	if files, err := m.Resolve("8250"); err != nil || len(files) != 0 {
		t.Errorf("a built-in module resolves to nothing to load, got %v, %v", files, err)
	}
}
