package loader_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/lab/assets"
	"github.com/viovmm/vio/loader"
	"github.com/viovmm/vio/loader/loadertest"
	"github.com/viovmm/vio/memory"
)

func newMem(t testing.TB, layout ...memory.Layout) *memory.Memory {
	t.Helper()
	m, err := memory.New(layout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func parse(t *testing.T, img []byte) (*loader.Kernel, error) {
	t.Helper()
	return loader.Parse(bytes.NewReader(img), int64(len(img)))
}

func TestParseSynthetic(t *testing.T) {
	o := loadertest.Default()
	o.SetupSects = 7
	o.InitrdAddrMax = 0x3fffffff
	img := loadertest.BzImage(o)
	k, err := parse(t, img)
	if err != nil {
		t.Fatal(err)
	}
	h := k.Header
	if h.Version != o.Version || h.SetupSects != 7 || h.SetupSize() != 8*512 {
		t.Errorf("version %#x setup %d/%d", h.Version, h.SetupSects, h.SetupSize())
	}
	if h.KernelAlignment != o.KernelAlignment || !h.Relocatable || h.PrefAddress != o.PrefAddress ||
		h.CmdlineSize != o.CmdlineSize || h.InitrdAddrMax != o.InitrdAddrMax || h.XLoadflags != o.XLoadflags {
		t.Errorf("header fields: %+v", h)
	}
	if got, want := k.KernelSize(), int64(len(img))-h.SetupSize(); got != want {
		t.Errorf("kernel size %d, want %d", got, want)
	}
	if len(h.Raw) != 0x26c-0x1f1 || !bytes.Equal(h.Raw, img[0x1f1:0x26c]) {
		t.Errorf("raw header is %d bytes, not the image's 0x1f1..0x26c", len(h.Raw))
	}
	if h.VersionString() != "2.15" {
		t.Errorf("version string %q", h.VersionString())
	}
}

func TestLoadSynthetic(t *testing.T) {
	o := loadertest.Default()
	o.Entry64 = []byte{0xf4} // hlt
	img := loadertest.BzImage(o)
	k, err := parse(t, img)
	if err != nil {
		t.Fatal(err)
	}
	mem := newMem(t, memory.Layout{GPA: 0, Size: 64 << 20})
	info, err := k.Load(mem, loader.DefaultLoadAddr)
	if err != nil {
		t.Fatal(err)
	}
	if info.Entry64 != loader.DefaultLoadAddr+0x200 || info.RunAddr != o.PrefAddress ||
		info.End != o.PrefAddress+uint64(len(img)-5*512)*4 {
		t.Errorf("load info %+v", info)
	}
	got := make([]byte, k.KernelSize())
	mem.ReadAt(got, loader.DefaultLoadAddr)
	if !bytes.Equal(got, img[5*512:]) {
		t.Fatal("protected-mode kernel not copied verbatim")
	}
	var b [1]byte
	mem.ReadAt(b[:], int64(info.Entry64))
	if b[0] != 0xf4 {
		t.Errorf("entry point holds %#x", b[0])
	}

	// A relocatable kernel loaded above pref_address runs at the next
	// kernel_alignment boundary.
	info, err = k.Load(mem, 0x2100000+0x1000)
	if err != nil {
		t.Fatal(err)
	}
	if info.RunAddr != 0x2200000 {
		t.Errorf("run address %#x, want 0x2200000", info.RunAddr)
	}
}

func TestLoadDoesNotFit(t *testing.T) {
	k, err := parse(t, loadertest.BzImage(loadertest.Default()))
	if err != nil {
		t.Fatal(err)
	}
	// 16 MiB of RAM: the kernel wants to run at 16 MiB.
	mem := newMem(t, memory.Layout{GPA: 0, Size: 16 << 20})
	if _, err := k.Load(mem, loader.DefaultLoadAddr); !errors.Is(err, loader.ErrTooBig) {
		t.Fatalf("got %v, want ErrTooBig", err)
	}
}

func TestParseRejects(t *testing.T) {
	elf := append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 2000)...)
	gz := append([]byte{0x1f, 0x8b, 8, 0}, make([]byte, 100)...)
	random := make([]byte, 4096)
	for i := range random {
		random[i] = byte(i*131 + i>>3)
	}
	old := loadertest.Default()
	old.Version = 0x0205
	no64 := loadertest.Default()
	no64.XLoadflags = 0
	zimage := loadertest.Default()
	zimage.Loadflags = 0
	badAlign := loadertest.Default()
	badAlign.KernelAlignment = 3 << 20
	truncated := loadertest.BzImage(loadertest.Default())
	truncated = truncated[:len(truncated)-100]
	smallInit := loadertest.Default()
	smallInit.InitSize = 4096

	for _, tc := range []struct {
		name string
		img  []byte
		want error
		says string
	}{
		{"elf", elf, loader.ErrNotBzImage, "ELF"},
		{"gzip", gz, loader.ErrNotBzImage, "gzip"},
		{"random", random, loader.ErrNotBzImage, "neither"},
		{"empty", nil, loader.ErrNotBzImage, "empty"},
		{"old protocol", loadertest.BzImage(old), loader.ErrBootProtocol, "2.05"},
		{"no 64-bit entry", loadertest.BzImage(no64), loader.ErrBootProtocol, "XLF_KERNEL_64"},
		{"zImage", loadertest.BzImage(zimage), loader.ErrBootProtocol, "zImage"},
		{"bad alignment", loadertest.BzImage(badAlign), loader.ErrNotBzImage, "power of two"},
		{"truncated", truncated, loader.ErrNotBzImage, "truncated"},
		{"init_size too small", loadertest.BzImage(smallInit), loader.ErrNotBzImage, "init_size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.img)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("got %v, want %v saying %q", err, tc.want, tc.says)
			}
		})
	}
}

func TestInitrdPlacement(t *testing.T) {
	k, err := parse(t, loadertest.BzImage(loadertest.Default()))
	if err != nil {
		t.Fatal(err)
	}
	initrd := make([]byte, 1<<20+5)
	for i := range initrd {
		initrd[i] = byte(i * 13)
	}
	r := bytes.NewReader(initrd)
	n := uint64(len(initrd))

	t.Run("top of RAM", func(t *testing.T) {
		mem := newMem(t, memory.Layout{GPA: 0, Size: 64 << 20})
		addr, err := k.LoadInitrd(mem, r, int64(n), 32<<20)
		if err != nil {
			t.Fatal(err)
		}
		if addr%4096 != 0 || addr+n > 64<<20 || addr+n+4096 <= 64<<20 {
			t.Errorf("initrd at %#x+%#x is not the highest page-aligned fit below 64 MiB", addr, n)
		}
		got := make([]byte, n)
		mem.ReadAt(got, int64(addr))
		if !bytes.Equal(got, initrd) {
			t.Error("initrd content differs")
		}
	})
	t.Run("initrd_addr_max", func(t *testing.T) {
		o := loadertest.Default()
		o.InitrdAddrMax = 48<<20 - 1
		k, _ := parse(t, loadertest.BzImage(o))
		mem := newMem(t, memory.Layout{GPA: 0, Size: 64 << 20})
		addr, err := k.LoadInitrd(mem, r, int64(n), 32<<20)
		if err != nil {
			t.Fatal(err)
		}
		if addr+n > 48<<20 || addr+n+4096 <= 48<<20 {
			t.Errorf("initrd at %#x+%#x, want just below 48 MiB", addr, n)
		}
	})
	t.Run("skips a region that is too small", func(t *testing.T) {
		// The high region is under the limit but too small: use the low one.
		o := loadertest.Default()
		o.InitrdAddrMax = 0xffffffff
		k, _ := parse(t, loadertest.BzImage(o))
		mem := newMem(t, memory.Layout{GPA: 0, Size: 64 << 20}, memory.Layout{GPA: 0xc0000000 - 1<<20, Size: 1 << 20})
		addr, err := k.LoadInitrd(mem, r, int64(n), 32<<20)
		if err != nil {
			t.Fatal(err)
		}
		if addr >= 64<<20 {
			t.Errorf("initrd at %#x", addr)
		}
	})
	t.Run("too big", func(t *testing.T) {
		mem := newMem(t, memory.Layout{GPA: 0, Size: 34 << 20})
		if _, err := k.LoadInitrd(mem, r, int64(n)+2<<20, 32<<20); !errors.Is(err, loader.ErrTooBig) {
			t.Fatalf("got %v, want ErrTooBig", err)
		}
	})
	t.Run("short file", func(t *testing.T) {
		mem := newMem(t, memory.Layout{GPA: 0, Size: 64 << 20})
		if _, err := k.LoadInitrd(mem, r, int64(n)+10, 32<<20); err == nil {
			t.Fatal("loaded an initrd longer than its file")
		}
	})
}

func TestCmdline(t *testing.T) {
	c := loader.NewCmdline(40)
	for _, p := range []string{"console=ttyS0", " quiet "} {
		if err := c.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.AddKV("x", "a b"); err != nil {
		t.Fatal(err)
	}
	if got, want := c.String(), `console=ttyS0 quiet x="a b"`; got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	before := c.String()
	if err := c.Add("panic=1 reboot=t" + strings.Repeat("x", 10)); !errors.Is(err, loader.ErrTooBig) {
		t.Errorf("over the limit: %v", err)
	}
	if err := c.Add("a\x00b"); err == nil {
		t.Error("accepted NUL")
	}
	if err := c.AddKV("k=", "v"); err == nil {
		t.Error("accepted a key with =")
	}
	if c.String() != before {
		t.Errorf("a failed Add changed the line to %q", c.String())
	}
	// Exactly at the limit is fine.
	if err := c.Add(strings.Repeat("y", 40-len(before)-1)); err != nil {
		t.Errorf("at the limit: %v", err)
	}
	mem := newMem(t, memory.Layout{GPA: 0, Size: 1 << 20})
	if err := c.Write(mem, 0x20000); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, c.Len()+1)
	mem.ReadAt(got, 0x20000)
	if string(got) != c.String()+"\x00" {
		t.Errorf("in memory: %q", got)
	}
}

// realKernel finds a distribution kernel to test against, if there is one.
func realKernel(t *testing.T) string {
	cands := []string{os.Getenv("VIO_TEST_BZIMAGE")}
	// The lab's Debian kernel, if `vio-lab assets` fetched it.
	if a, err := assets.Load(assets.DefaultDir()); err == nil {
		cands = append(cands, a.Kernel)
	}
	for _, g := range []string{"../.lab/assets/*vmlinuz*", "../.lab/assets/*bzImage*", "/boot/vmlinuz-*"} {
		m, _ := filepath.Glob(g)
		cands = append(cands, m...)
	}
	for _, c := range cands {
		if c == "" {
			continue
		}
		if f, err := os.Open(c); err == nil {
			f.Close()
			return c
		}
	}
	t.Skip("no real kernel (set VIO_TEST_BZIMAGE, run `vio-lab assets`, or have one in /boot)")
	return ""
}

func TestRealKernel(t *testing.T) {
	path := realKernel(t)
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k, err := parse(t, img)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	h := k.Header
	t.Logf("%s: protocol %s, setup %d sectors, kernel %d bytes, init_size %d MiB, align %#x, pref %#x, xloadflags %#x, cmdline_size %d",
		path, h.VersionString(), h.SetupSects, k.KernelSize(), h.InitSize>>20, h.KernelAlignment, h.PrefAddress, h.XLoadflags, h.CmdlineSize)
	// The compressed payload starts with one of the kernel's
	// decompressors' magic numbers.
	magic, err := k.PayloadMagic(4)
	if err != nil {
		t.Fatal(err)
	}
	known := [][]byte{{0x1f, 0x8b}, {0xfd, '7', 'z', 'X'}, {0x28, 0xb5, 0x2f, 0xfd}, {0x02, 0x21, 0x4c, 0x18}, {0x5d, 0}, []byte("BZh"), {0x89, 'L', 'Z', 'O'}}
	ok := false
	for _, m := range known {
		ok = ok || bytes.HasPrefix(magic, m)
	}
	if !ok {
		t.Errorf("payload starts with % x, no known compression", magic)
	}
	mem := newMem(t, memory.Layout{GPA: 0, Size: 256 << 20})
	info, err := k.Load(mem, loader.DefaultLoadAddr)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, k.KernelSize())
	mem.ReadAt(got, int64(info.LoadAddr))
	if !bytes.Equal(got, img[h.SetupSize():h.SetupSize()+k.KernelSize()]) {
		t.Error("kernel not copied verbatim")
	}
	small := newMem(t, memory.Layout{GPA: 0, Size: 32 << 20})
	if _, err := k.Load(small, loader.DefaultLoadAddr); !errors.Is(err, loader.ErrTooBig) {
		t.Errorf("32 MiB guest: got %v, want ErrTooBig", err)
	}
}
