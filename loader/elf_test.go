package loader_test

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/viovmm/vio/loader"
	"github.com/viovmm/vio/loader/loadertest"
	"github.com/viovmm/vio/memory"
)

func TestELF(t *testing.T) {
	code := []byte{0xf4, 1, 2, 3}
	img := loadertest.ELF(code, 0x200000, 0x3000)
	k, err := loader.ParseELF(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	if k.Entry != 0x200000 || len(k.Segments) != 1 || k.Segments[0].Memsz != 0x3004 {
		t.Fatalf("%+v", k)
	}
	mem := newMem(t, memory.Layout{GPA: 0, Size: 4 << 20})
	// Dirty the bss first: Load must zero it.
	junk := bytes.Repeat([]byte{0xaa}, 0x3000)
	mem.WriteAt(junk, 0x200004)
	info, err := k.Load(mem)
	if err != nil {
		t.Fatal(err)
	}
	if info.Entry64 != 0x200000 || info.LoadAddr != 0x200000 || info.End != 0x203004 {
		t.Errorf("load info %+v", info)
	}
	got := make([]byte, 0x3004)
	mem.ReadAt(got, 0x200000)
	if !bytes.Equal(got[:4], code) || !bytes.Equal(got[4:], make([]byte, 0x3000)) {
		t.Error("segment not loaded with a zeroed tail")
	}
	small := newMem(t, memory.Layout{GPA: 0, Size: 2 << 20})
	if _, err := k.Load(small); !errors.Is(err, loader.ErrTooBig) {
		t.Errorf("2 MiB guest: %v", err)
	}

	// Rejections.
	bz := loadertest.BzImage(loadertest.Default())
	if _, err := loader.ParseELF(bytes.NewReader(bz), int64(len(bz))); !errors.Is(err, loader.ErrNotELF) {
		t.Errorf("bzImage as ELF: %v", err)
	}
	bad := append([]byte(nil), img...)
	bad[24] = 0x10 // entry outside the segment
	if _, err := loader.ParseELF(bytes.NewReader(bad), int64(len(bad))); !errors.Is(err, loader.ErrNotELF) {
		t.Errorf("entry outside segments: %v", err)
	}
	trunc := img[:len(img)-2]
	if _, err := loader.ParseELF(bytes.NewReader(trunc), int64(len(trunc))); !errors.Is(err, loader.ErrNotELF) {
		t.Errorf("truncated: %v", err)
	}
	hdr := loader.ELFSetupHeader(2047)
	if string(hdr[0x202-0x1f1:0x206-0x1f1]) != "HdrS" || len(hdr) != 0x26c-0x1f1 {
		t.Error("synthesised setup header lacks HdrS")
	}
}

func TestRealKernelELF(t *testing.T) {
	path := realKernel(t)
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k, err := loader.Parse(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	vmlinux, err := loadertest.Vmlinux(img)
	if errors.Is(err, loadertest.ErrUnsupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	e, err := loader.ParseELF(bytes.NewReader(vmlinux), int64(len(vmlinux)))
	if err != nil {
		t.Fatal(err)
	}
	if e.Entry != k.Header.PrefAddress {
		t.Errorf("vmlinux entry %#x, bzImage pref_address %#x", e.Entry, k.Header.PrefAddress)
	}
	mem := newMem(t, memory.Layout{GPA: 0, Size: 256 << 20})
	info, err := e.Load(mem)
	if err != nil {
		t.Fatal(err)
	}
	// The image decompresses into init_size from its run address; the
	// vmlinux's segments must fit in that.
	if info.End > k.Header.PrefAddress+uint64(k.Header.InitSize) {
		t.Errorf("vmlinux ends at %#x, past pref_address+init_size %#x", info.End, k.Header.PrefAddress+uint64(k.Header.InitSize))
	}
	t.Logf("vmlinux: %d segments, entry %#x, %#x..%#x", len(e.Segments), e.Entry, info.LoadAddr, info.End)
}
