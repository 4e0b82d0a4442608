package stripe_test

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/stripe"
)

// The conformance suite over five children with chunks that do not divide
// the suite's requests, so requests cross chunks at odd offsets. The suite
// wants an exact size: the children hold exactly the chunks.
func TestConformance(t *testing.T) {
	// DefaultSize is 512 * 8195 = 512 * 5 * 11 * 149: five children with
	// chunks of 512 and 11*512 bytes divide it exactly.
	for _, chunk := range []int64{512, 11 * 512} {
		blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
			const n = 5
			if size%(n*chunk) != 0 {
				t.Fatalf("suite size %d is not %d chunks of %d: pick another chunk", size, n, chunk)
			}
			var kids []block.Backend
			for range n {
				kids = append(kids, blocktest.NewMem(size/n))
			}
			s, err := stripe.New(kids, chunk)
			if err != nil {
				t.Fatal(err)
			}
			return s
		})
	}
}

// Chunk k lives in child k%N at (k/N)*chunk.
func TestLayout(t *testing.T) {
	const chunk, n, per = 1024, 3, 4 * 1024
	var kids []*blocktest.Mem
	var bs []block.Backend
	for range n {
		k := blocktest.NewMem(per + 100) // the tail beyond whole chunks stays unused
		kids = append(kids, k)
		bs = append(bs, k)
	}
	s, err := stripe.New(bs, chunk)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Size() != n*per {
		t.Fatalf("size %d, want %d", s.Size(), n*per)
	}
	data := make([]byte, n*per)
	rand.NewChaCha8([32]byte{3}).Read(data)
	if _, err := s.WriteAt(data[700:], 700); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WriteAt(data[:700], 0); err != nil {
		t.Fatal(err)
	}
	for k := 0; k < n*per/chunk; k++ {
		got := kids[k%n].Bytes()[(k/n)*chunk : (k/n+1)*chunk]
		if !bytes.Equal(got, data[k*chunk:(k+1)*chunk]) {
			t.Fatalf("chunk %d is not in child %d at %d", k, k%n, (k/n)*chunk)
		}
	}
	got := make([]byte, len(data))
	if _, err := s.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v, equal %v", err, bytes.Equal(got, data))
	}
}

func TestRefuses(t *testing.T) {
	m := []block.Backend{blocktest.NewMem(4096)}
	for _, c := range []int64{0, 511, 513, 1 << 31} {
		if _, err := stripe.New(m, c); err == nil {
			t.Errorf("chunk %d accepted", c)
		}
	}
	if _, err := stripe.New([]block.Backend{blocktest.NewMem(4096), blocktest.NewMem(100)}, 512); err == nil {
		t.Error("a child smaller than a chunk accepted")
	}
}
