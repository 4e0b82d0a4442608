package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// secret fills the host file a hostile image tries to read.
var secret = bytes.Repeat([]byte("HOST-SECRET!"), 1<<19)

// hostileDisk builds what a guest leaves on its raw disk to read a host
// file: a complete qcow2 image (header, L1, refcounts) at the start of the
// disk, naming backing (format raw). It returns the disk's path and the
// bytes the guest wrote (the disk's true contents).
func hostileDisk(t testing.TB, dir, backing string) (string, []byte) {
	t.Helper()
	tmp := t.TempDir()
	q := filepath.Join(tmp, "header.qcow2")
	os.WriteFile(filepath.Join(tmp, "b"), nil, 0o644)
	if err := Create(q, CreateOptions{Size: 4 << 20, BackingFile: "b", BackingFormat: Raw}); err != nil {
		t.Fatal(err)
	}
	hdr, err := os.ReadFile(q)
	if err != nil {
		t.Fatal(err)
	}
	setBacking(hdr, backing)
	disk := make([]byte, 4<<20)
	copy(disk, hdr)
	path := filepath.Join(dir, "guest.raw")
	if err := os.WriteFile(path, disk, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, disk
}

// setBacking points the backing file name of a qcow2 image (with 64 KiB
// clusters) at name, stored in the unused second half of cluster 0.
func setBacking(img []byte, name string) {
	const nameAt = 0x8000
	binary.BigEndian.PutUint64(img[8:], nameAt)
	binary.BigEndian.PutUint32(img[16:], uint32(len(name)))
	copy(img[nameAt:], name)
}

// hostSecret writes the host file outside the disk's directory.
func hostSecret(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(p, secret[:4<<20], 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func readAll(t *testing.T, b interface {
	ReadAt([]byte, int64) (int, error)
	Size() int64
}) []byte {
	t.Helper()
	p := make([]byte, b.Size())
	if _, err := b.ReadAt(p, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHostileHeaderConfined reproduces the finding: a raw disk whose first
// sector holds a qcow2 header naming a host file as backing. The file was
// followed by every open that probed; now no way of opening the disk as a
// guest's (OpenDisk, with or without a format) or as the tools do reads a
// byte of it.
func TestHostileHeaderConfined(t *testing.T) {
	shadow := hostSecret(t)
	for _, backing := range []string{shadow, "../" + filepath.Base(filepath.Dir(shadow)) + "/shadow", "nbd+unix:///x?socket=/nonexistent"} {
		t.Run(strings.ReplaceAll(backing, "/", "_"), func(t *testing.T) {
			// The secret's directory and the disk's share a parent, so
			// the ".." name really reaches it.
			dir := filepath.Join(filepath.Dir(filepath.Dir(shadow)), "vm")
			os.MkdirAll(dir, 0o755)
			path, guest := hostileDisk(t, dir, backing)
			defer os.Remove(path)

			// Given format raw: the guest's own bytes.
			b, format, err := OpenDisk(path, OpenOptions{Format: Raw, Lock: true}, nil)
			if err != nil || format != Raw {
				t.Fatalf("OpenDisk format=raw: %v, %q", err, format)
			}
			if got := readAll(t, b); !bytes.Equal(got, guest) {
				t.Error("format=raw does not read the guest's bytes")
			}
			b.Close()

			// No format, writable or read-only: probed as qcow2, whose
			// backing name is refused.
			for _, ro := range []bool{false, true} {
				var warned string
				b, _, err := OpenDisk(path, OpenOptions{ReadOnly: ro, Lock: true}, func(m string) { warned = m })
				if err == nil {
					got := readAll(t, b)
					b.Close()
					if bytes.Contains(got, []byte("HOST-SECRET")) {
						t.Fatalf("read-only=%v: the host file's bytes reached the disk", ro)
					}
					t.Fatalf("read-only=%v: a disk naming %q as backing opened", ro, backing)
				}
				if !errors.Is(err, ErrBackingRefused) {
					t.Errorf("read-only=%v: %v, want ErrBackingRefused", ro, err)
				}
				if !ro && !strings.Contains(warned, "format=qcow2") {
					t.Errorf("writable probed qcow2: warning %q, want one asking for format=qcow2", warned)
				}
			}
			// The tools.
			if _, err := GetInfo(path, ToolOptions{}); !errors.Is(err, ErrBackingRefused) {
				t.Errorf("GetInfo: %v, want ErrBackingRefused", err)
			}
			if in, err := GetInfo(path, ToolOptions{Format: Raw}); err != nil || in.Format != Raw || in.BackingFile != "" {
				t.Errorf("GetInfo -f raw: %+v, %v", in, err)
			}
			if _, _, err := Check(path, ToolOptions{}); !errors.Is(err, ErrBackingRefused) {
				t.Errorf("Check: %v, want ErrBackingRefused", err)
			}
			out := filepath.Join(t.TempDir(), "out.raw")
			if err := Convert(path, out, ConvertOptions{Format: Raw}); !errors.Is(err, ErrBackingRefused) {
				t.Errorf("Convert: %v, want ErrBackingRefused", err)
			}
		})
	}
}

// TestProbedRawHeadGuarded: a writable disk opened without a format that
// probes raw refuses the guest's attempt to write a qcow2 header into its
// first sector (whole, or piece by piece), so that it cannot probe as
// qcow2 next time; other writes to the sector pass.
func TestProbedRawHeadGuarded(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "disk.raw")
	os.WriteFile(path, make([]byte, 1<<20), 0o644)
	_, hostile := hostileDisk(t, t.TempDir(), "/etc/passwd")
	b, format, err := OpenDisk(path, OpenOptions{Lock: true}, nil)
	if err != nil || format != Raw {
		t.Fatalf("OpenDisk: %v, %q", err, format)
	}
	if _, err := b.WriteAt(hostile[:64<<10], 0); !errors.Is(err, ErrHeadGuarded) {
		t.Errorf("writing a qcow2 header at 0: %v, want ErrHeadGuarded", err)
	}
	if _, err := b.WriteAt([]byte("QF"), 0); err != nil {
		t.Fatalf("a harmless write at 0: %v", err)
	}
	if _, err := b.WriteAt([]byte("I\xfb"), 2); !errors.Is(err, ErrHeadGuarded) {
		t.Errorf("completing the magic piecewise: %v, want ErrHeadGuarded", err)
	}
	if _, err := b.WriteAt([]byte("KDMV"), 0); !errors.Is(err, ErrHeadGuarded) {
		t.Errorf("writing a VMDK magic: %v, want ErrHeadGuarded", err)
	}
	if _, err := b.WriteAt([]byte("boot sector"), 3); err != nil {
		t.Errorf("an ordinary write into sector 0: %v", err)
	}
	if _, err := b.WriteAt(hostile[:4096], 1<<19); err != nil {
		t.Errorf("a qcow2 header elsewhere on the disk: %v", err)
	}
	b.Close()
	if f, err := Probe(path); err != nil || f != Raw {
		t.Errorf("after the guest's writes the disk probes as %q, %v", f, err)
	}
	// Given format=raw, the guest may write what it likes.
	b, _, err = OpenDisk(path, OpenOptions{Format: Raw, Lock: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.WriteAt(hostile[:512], 0); err != nil {
		t.Errorf("format=raw refuses a write at 0: %v", err)
	}
	b.Close()
}

func TestConfine(t *testing.T) {
	for _, name := range []string{"base.qcow2", "sub/base.raw", "./a", "a/./b", "..a", "a..b/c"} {
		if p, err := confine("/imgs", name, false); err != nil || !strings.HasPrefix(p, "/imgs/") {
			t.Errorf("confine(%q) = %q, %v; want it under /imgs", name, p, err)
		}
	}
	for _, name := range []string{"", "/etc/shadow", "/dev/sda", "../x", "a/../../x", "a/..", "..", "nbd://host/x", "a\x00b"} {
		if p, err := confine("/imgs", name, false); !errors.Is(err, ErrBackingRefused) {
			t.Errorf("confine(%q) = %q, %v; want ErrBackingRefused", name, p, err)
		} else if strings.Contains(err.Error(), "\n") {
			t.Errorf("confine(%q): error spans lines", name)
		}
	}
	if p, err := confine("/imgs", "../base", true); err != nil || p != "/base" {
		t.Errorf("allowed ../base = %q, %v", p, err)
	}
}

// TestAllowBacking: a trusted chain with ".." is followed when allowed.
func TestAllowBacking(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "top"), 0o755)
	base := filepath.Join(dir, "base.raw")
	os.WriteFile(base, bytes.Repeat([]byte{7}, 1<<20), 0o644)
	top := filepath.Join(dir, "top", "t.qcow2")
	if err := Create(top, CreateOptions{BackingFile: "../base.raw", BackingFormat: Raw, Size: -1}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(top, OpenOptions{ReadOnly: true}); !errors.Is(err, ErrBackingRefused) {
		t.Errorf("../ backing without AllowBacking: %v", err)
	}
	b, err := Open(top, OpenOptions{ReadOnly: true, AllowBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p := make([]byte, 4)
	b.ReadAt(p, 0)
	if !bytes.Equal(p, []byte{7, 7, 7, 7}) {
		t.Errorf("allowed chain reads %v", p)
	}
}

// FuzzOpenConfined feeds arbitrary backing names and header bytes to the
// probe and the backing-chain resolver: whatever the image says, no path
// outside the image's directory is ever opened.
func FuzzOpenConfined(f *testing.F) {
	tmpl := filepath.Join(f.TempDir(), "t.qcow2")
	os.WriteFile(filepath.Join(filepath.Dir(tmpl), "b.raw"), make([]byte, 1<<20), 0o644)
	if err := Create(tmpl, CreateOptions{Size: 1 << 20, BackingFile: "b.raw", BackingFormat: Raw}); err != nil {
		f.Fatal(err)
	}
	template, err := os.ReadFile(tmpl)
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range []string{"b.raw", "/etc/passwd", "../b.raw", "sub/../../x", "img", "nbd://127.0.0.1:1/x", "./b.raw"} {
		f.Add(name, []byte{})
	}
	f.Add("b.raw", []byte{0, 0, 0, 2})
	f.Add("x", []byte("KDMV"))
	f.Fuzz(func(t *testing.T, name string, head []byte) {
		if len(name) > 1023 {
			name = name[:1023]
		}
		dir := t.TempDir()
		img := append([]byte(nil), template...)
		setBacking(img, name)
		copy(img[4:min(512, 4+len(head))], head)
		if len(head) > 0 && head[0] == 0xff {
			copy(img, head) // sometimes not qcow2 at all
		}
		path := filepath.Join(dir, "img")
		os.WriteFile(path, img, 0o644)
		os.WriteFile(filepath.Join(dir, "b.raw"), make([]byte, 1<<20), 0o644)
		traceOpen = func(p string) {
			rel, err := filepath.Rel(dir, filepath.Clean(p))
			if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) || strings.Contains(p, "://") {
				t.Fatalf("opened %q, outside %s (backing name %q)", p, dir, name)
			}
		}
		defer func() { traceOpen = nil }()
		for _, ro := range []bool{true, false} {
			if b, _, err := OpenDisk(path, OpenOptions{ReadOnly: ro}, nil); err == nil {
				b.Close()
			}
		}
		GetInfo(path, ToolOptions{})
	})
}
