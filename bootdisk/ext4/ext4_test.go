package ext4_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/bootdisk/bootdisktest"
	"github.com/viovmm/vio/bootdisk/ext4"
)

// tree builds a directory with what the reader must handle: small and
// large files (several extents, more than one extent-tree level with 1 KiB
// blocks), a sparse file, fast and slow symlinks (relative, absolute,
// through directories, chains, loops), a directory big enough for an
// htree index, and "..".
func tree(t *testing.T) (string, map[string][]byte) {
	root := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	big := make([]byte, 5<<20+123)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	want := map[string][]byte{
		"/etc/hostname":        []byte("vio-test\n"),
		"/boot/vmlinuz-6.1.0":  big,
		"/boot/initrd.img-6.1": bytes.Repeat([]byte("initrd!"), 70000),
		"/empty":               {},
	}
	bootdisktest.WriteTree(t, root, map[string]string{
		"etc/hostname":        string(want["/etc/hostname"]),
		"boot/vmlinuz-6.1.0":  string(big),
		"boot/initrd.img-6.1": string(want["/boot/initrd.img-6.1"]),
		"empty":               "",
		"vmlinuz":             "->boot/vmlinuz-6.1.0",
		"initrd.img":          "->/boot/initrd.img-6.1",
		"boot/vmlinuz":        "->vmlinuz-6.1.0",
		"lnk/a":               "->../vmlinuz",
		"lnk/long":            "->" + strings.Repeat("./", 60) + "../etc/hostname",
		"lnk/loop1":           "->loop2",
		"lnk/loop2":           "->loop1",
		"lnk/dangling":        "->/nowhere",
	})
	// A sparse file: data, a hole, data.
	f, err := os.Create(filepath.Join(root, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("start"), 0)
	f.WriteAt([]byte("end"), 3<<20)
	f.Close()
	want["/sparse"] = make([]byte, 3<<20+3)
	copy(want["/sparse"], "start")
	copy(want["/sparse"][3<<20:], "end")
	// A directory with many entries gets an htree index.
	os.MkdirAll(filepath.Join(root, "many"), 0o755)
	for i := 0; i < 600; i++ {
		name := fmt.Sprintf("many/file-with-a-longish-name-%04d", i)
		os.WriteFile(filepath.Join(root, name), []byte(name), 0o644)
	}
	// Many extents: one byte every 8 KiB makes a file whose extent tree
	// needs index nodes.
	h, err := os.Create(filepath.Join(root, "holes"))
	if err != nil {
		t.Fatal(err)
	}
	want["/holes"] = make([]byte, 2<<20+1)
	for off := 0; off <= 2<<20; off += 8 << 10 {
		h.WriteAt([]byte{byte(off >> 13)}, int64(off))
		want["/holes"][off] = byte(off >> 13)
	}
	h.Close()
	want["/many/file-with-a-longish-name-0599"] = []byte("many/file-with-a-longish-name-0599")
	want["/vmlinuz"] = big
	want["/boot/vmlinuz"] = big
	want["/lnk/a"] = big
	want["/initrd.img"] = want["/boot/initrd.img-6.1"]
	want["/lnk/long"] = want["/etc/hostname"]
	want["/boot/../etc/./hostname"] = want["/etc/hostname"]
	return root, want
}

func TestRead(t *testing.T) {
	bootdisktest.Need(t, "mkfs.ext4")
	root, want := tree(t)
	for _, c := range []struct {
		name string
		mkfs []string
	}{
		{"ext4", []string{"-U", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "-L", "vioroot"}},
		{"1k-blocks", []string{"-b", "1024"}},
		{"no-64bit", []string{"-O", "^64bit"}},
		{"ext2-blockmap", []string{"-t", "ext2"}},
		{"ext3-blockmap", []string{"-t", "ext3", "-b", "1024"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "fs.img")
			bootdisktest.Mkfs(t, img, 0, 48, root, c.mkfs...)
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, _ := f.Stat()
			fs, err := ext4.Open(f, st.Size())
			if err != nil {
				t.Fatal(err)
			}
			if c.name == "ext4" {
				if fs.UUID() != "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0" || fs.Label() != "vioroot" {
					t.Errorf("UUID %s label %q", fs.UUID(), fs.Label())
				}
			}
			// blkid is the reference for the UUID.
			if out := strings.TrimSpace(bootdisktest.Run(t, "blkid", "-o", "value", "-s", "UUID", img)); out != fs.UUID() {
				t.Errorf("UUID %s, blkid says %s", fs.UUID(), out)
			}
			for name, w := range want {
				got, err := fs.ReadFile(name, 64<<20)
				if err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}
				if !bytes.Equal(got, w) {
					t.Errorf("%s: read %d bytes, differing from the %d written", name, len(got), len(w))
				}
			}
			// Reads at odd offsets and lengths through ReadAt.
			fl, err := fs.Open("/boot/vmlinuz-6.1.0")
			if err != nil {
				t.Fatal(err)
			}
			big := want["/boot/vmlinuz-6.1.0"]
			for _, r := range [][2]int64{{0, 1}, {1023, 2}, {4095, 4097}, {int64(len(big)) - 10, 10}, {1 << 20, 3 << 20}} {
				b := make([]byte, r[1])
				if _, err := fl.ReadAt(b, r[0]); err != nil || !bytes.Equal(b, big[r[0]:r[0]+r[1]]) {
					t.Errorf("ReadAt(%d, %d): %v or wrong bytes", r[0], r[1], err)
				}
			}
			b := make([]byte, 20)
			if n, err := fl.ReadAt(b, int64(len(big))-5); n != 5 || err != io.EOF {
				t.Errorf("read past the end: %d, %v; want 5, EOF", n, err)
			}
			if p, err := fs.Resolve("/lnk/a"); err != nil || p != "/boot/vmlinuz-6.1.0" {
				t.Errorf("Resolve(/lnk/a) = %q, %v", p, err)
			}
			for name, wantErr := range map[string]error{
				"/nope":           ext4.ErrNotFound,
				"/lnk/dangling":   ext4.ErrNotFound,
				"/lnk/loop1":      ext4.ErrTooManyLinks,
				"/boot":           ext4.ErrNotRegular,
				"/etc/hostname/x": ext4.ErrNotFound,
			} {
				if _, err := fs.Open(name); !errors.Is(err, wantErr) {
					t.Errorf("Open(%s) = %v, want %v", name, err, wantErr)
				}
			}
			if _, err := fs.ReadFile("/boot/vmlinuz-6.1.0", 1<<20); !errors.Is(err, ext4.ErrTooBig) {
				t.Errorf("ReadFile beyond its limit: %v", err)
			}
		})
	}
}

func TestNotExt4(t *testing.T) {
	for _, b := range [][]byte{nil, make([]byte, 4096), bytes.Repeat([]byte{0xff}, 8192)} {
		if _, err := ext4.Open(bytes.NewReader(b), int64(len(b))); !errors.Is(err, ext4.ErrNotExt4) {
			t.Errorf("%d bytes: %v, want ErrNotExt4", len(b), err)
		}
	}
}

// FuzzOpen mutates a real small file system and reads everything it can:
// nothing may panic, hang or allocate without bound.
func FuzzOpen(f *testing.F) {
	if _, err := os.Stat("testdata/small.img"); err == nil {
		b, _ := os.ReadFile("testdata/small.img")
		f.Add(b)
	}
	f.Add(make([]byte, 2048))
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, err := ext4.Open(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		fs.UUID()
		for _, name := range []string{"/a", "/d/b", "/l", "/h", "/d/l", "/d/../a", "/boot/grub/grub.cfg"} {
			fs.ReadFile(name, 1<<20)
			fs.Resolve(name)
		}
	})
}
