package dmatest_test

import (
	"errors"
	"testing"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/memory/dmatest"
)

func TestTranslate(t *testing.T) {
	m, err := memory.New([]memory.Layout{{GPA: 0, Size: 16 << 12}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	d := dmatest.New(m)
	if err := d.Map(dmatest.Window{IOVA: 1 << 40, GPA: 2 << 12, Size: 2 << 12}); err != nil {
		t.Fatal(err)
	}
	if err := d.Map(dmatest.Window{IOVA: 1<<40 + 1<<12, GPA: 0, Size: 1 << 12}); err == nil {
		t.Fatal("overlapping window accepted")
	}
	g0 := d.Generation()
	if _, err := d.WriteAt([]byte("abcd"), 1<<40+8); err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	if _, err := m.ReadAt(b[:], 2<<12+8); err != nil || string(b[:]) != "abcd" {
		t.Fatalf("GPA holds %q, %v; want the bytes written at the IOVA", b, err)
	}
	for _, c := range []struct{ addr, n uint64 }{{1<<40 - 1, 1}, {1<<40 + 2<<12 - 4, 8}, {0, 1}} {
		if _, err := d.Slice(c.addr, c.n); !errors.Is(err, memory.ErrNotMapped) {
			t.Errorf("Slice(%#x, %d) = %v, want ErrNotMapped", c.addr, c.n, err)
		}
	}
	if err := d.Move(1<<40, 8<<12); err != nil {
		t.Fatal(err)
	}
	if d.Generation() == g0 {
		t.Fatal("Move did not bump the generation")
	}
	if v, err := d.LoadUint32(1<<40 + 8); err != nil || v != 0 {
		t.Fatalf("after Move the IOVA reads %#x, %v; want the new GPA's zero", v, err)
	}
	if err := d.Unmap(1 << 40); err != nil {
		t.Fatal(err)
	}
	if err := d.StoreUint16(1<<40, 1); !errors.Is(err, memory.ErrNotMapped) {
		t.Fatalf("store after Unmap: %v, want ErrNotMapped", err)
	}
}
