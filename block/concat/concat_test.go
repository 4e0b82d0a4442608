package concat_test

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/concat"
)

// The conformance suite over three children of awkward sizes, so that
// requests cross boundaries at odd offsets.
func TestConformance(t *testing.T) {
	blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
		a, b := size/3+511, size/5+7
		c, err := concat.New([]block.Backend{blocktest.NewMem(a), blocktest.NewMem(b), blocktest.NewMem(size - a - b)})
		if err != nil {
			t.Fatal(err)
		}
		return c
	})
}

// Data lands in the child and at the offset the layout says.
func TestLayout(t *testing.T) {
	kids := []*blocktest.Mem{blocktest.NewMem(1000), blocktest.NewMem(0), blocktest.NewMem(3000), blocktest.NewMem(24)}
	var bs []block.Backend
	for _, k := range kids {
		bs = append(bs, k)
	}
	c, err := concat.New(bs)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != 4024 {
		t.Fatalf("size %d, want 4024", c.Size())
	}
	data := make([]byte, 4024)
	rand.NewChaCha8([32]byte{1}).Read(data)
	if _, err := c.WriteAt(data[900:4010], 900); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt(data[:900], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt(data[4010:], 4010); err != nil {
		t.Fatal(err)
	}
	want := [][]byte{data[:1000], {}, data[1000:4000], data[4000:]}
	for i, k := range kids {
		if !bytes.Equal(k.Bytes(), want[i]) {
			t.Errorf("child %d does not hold bytes of its range", i)
		}
	}
}

func TestRefuses(t *testing.T) {
	if _, err := concat.New(nil); err == nil {
		t.Error("no children accepted")
	}
	if _, err := concat.New([]block.Backend{blocktest.NewMem(0)}); err == nil {
		t.Error("an empty disk accepted")
	}
}
