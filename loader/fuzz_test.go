package loader_test

import (
	"bytes"
	"testing"

	"github.com/viovmm/vio/loader"
	"github.com/viovmm/vio/loader/loadertest"
	"github.com/viovmm/vio/memory"
)

// FuzzParse feeds arbitrary files to the header parser and, when one is
// accepted, loads it into a small guest: neither may panic, and an
// accepted header must describe a kernel inside the file.
func FuzzParse(f *testing.F) {
	small := loadertest.Default()
	small.ProtectedMode = make([]byte, 2048)
	small.PrefAddress = 2 << 20
	f.Add(loadertest.BzImage(small))
	o := loadertest.Default()
	o.Relocatable = false
	o.ProtectedMode = make([]byte, 4096)
	o.InitSize = 1 << 20
	o.PrefAddress = 1 << 20
	f.Add(loadertest.BzImage(o))
	f.Add([]byte("\x7fELF\x02\x01\x01\x00"))
	f.Add([]byte{})
	hdr := make([]byte, 0x300)
	copy(hdr[0x202:], "HdrS")
	hdr[0x200], hdr[0x201] = 0xeb, 0xff
	f.Add(hdr)

	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 4 << 20}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	f.Fuzz(func(t *testing.T, img []byte) {
		k, err := loader.Parse(bytes.NewReader(img), int64(len(img)))
		if err != nil {
			return
		}
		h := k.Header
		if k.KernelSize() <= 0 || h.SetupSize()+k.KernelSize() > int64(len(img)) {
			t.Fatalf("kernel %d bytes at %d in a %d-byte file", k.KernelSize(), h.SetupSize(), len(img))
		}
		if len(h.Raw) < 0x264-0x1f1 || len(h.Raw) > 0x290-0x1f1 {
			t.Fatalf("raw header of %d bytes", len(h.Raw))
		}
		if info, err := k.Load(mem, loader.DefaultLoadAddr); err == nil {
			if info.End > 4<<20 || info.RunAddr < info.LoadAddr && !h.Relocatable && info.RunAddr != h.PrefAddress {
				t.Fatalf("accepted load %+v in 4 MiB", info)
			}
			k.LoadInitrd(mem, bytes.NewReader(img), int64(len(img)), info.End)
		}
	})
}

// FuzzParseELF: arbitrary files through the ELF path; an accepted kernel
// must describe segments inside the file and load without panicking.
func FuzzParseELF(f *testing.F) {
	f.Add(loadertest.ELF([]byte{0xf4}, 0x100000, 0x1000))
	f.Add(loadertest.ELF(make([]byte, 100), 0x3ff000, 0))
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 4 << 20}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	f.Fuzz(func(t *testing.T, img []byte) {
		k, err := loader.ParseELF(bytes.NewReader(img), int64(len(img)))
		if err != nil {
			return
		}
		for _, s := range k.Segments {
			if s.Filesz > s.Memsz || s.Offset < 0 || uint64(s.Offset)+s.Filesz > uint64(len(img)) {
				t.Fatalf("accepted segment %+v in a %d-byte file", s, len(img))
			}
		}
		k.Load(mem)
	})
}
