package blocktest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/viovmm/vio/block"
)

// Factory returns a new, writable back-end of exactly size bytes whose
// contents are all zero. It registers its own cleanup with t (the suite
// closes the back-end itself; a second Close may return ErrClosed).
type Factory func(t *testing.T, size int64) block.Backend

// Opener creates the storage for one test, size bytes of zeroes, and returns
// a function that opens it: each call yields a new Backend on the same
// storage, and the suite closes one before opening the next.
type Opener func(t *testing.T, size int64) (open func() (block.Backend, error))

// DefaultSize is the size the suite asks factories for: a few MiB, not a
// multiple of any common cluster size, so that tails are exercised.
const DefaultSize = 4<<20 + 3*512

// check is one rule of the contract, written as a function returning an
// error so that the suite's own tests can prove each check catches a broken
// back-end.
type check struct {
	name string
	fn   func(b block.Backend, size int64, rng *rand.Rand) error
}

var checks = []check{
	{"Size", checkSize},
	{"ZeroFilled", checkZeroFilled},
	{"RoundTrip", checkRoundTrip},
	{"ReadPastEnd", checkReadPastEnd},
	{"WritePastEnd", checkWritePastEnd},
	{"Vectored", checkVectored},
	{"TryRead", checkTryRead},
	{"Flush", checkFlush},
	{"Discard", checkDiscard},
	{"WriteZeroes", checkWriteZeroes},
	{"Concurrent", checkConcurrent},
	{"Resize", checkResize},
	{"Closed", checkClosed},
}

// Run checks the back-ends made by f against the block.Backend contract,
// including the optional capabilities they implement.
func Run(t *testing.T, f Factory) {
	t.Helper()
	for i, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			b := f(t, DefaultSize)
			closed := false
			defer func() {
				if !closed {
					b.Close()
				}
			}()
			rng := rand.New(rand.NewPCG(uint64(i), 0x5eed))
			if err := c.fn(b, DefaultSize, rng); err != nil {
				t.Fatal(err)
			}
			if c.name != "Closed" {
				if err := b.Close(); err != nil {
					t.Fatalf("Close: %v", err)
				}
			}
			closed = true
		})
	}
}

// RunReopen checks that data survives Close and a new open, and that Flush
// followed by Close loses nothing.
func RunReopen(t *testing.T, o Opener) {
	t.Helper()
	t.Run("Reopen", func(t *testing.T) {
		open := o(t, DefaultSize)
		if err := checkReopen(open, DefaultSize, rand.New(rand.NewPCG(7, 7))); err != nil {
			t.Fatal(err)
		}
	})
}

func checkSize(b block.Backend, size int64, _ *rand.Rand) error {
	if got := b.Size(); got != size {
		return fmt.Errorf("Size() = %d, want %d", got, size)
	}
	return nil
}

func checkZeroFilled(b block.Backend, size int64, _ *rand.Rand) error {
	return compare(b, make([]byte, size))
}

// compare reads the whole back-end in pieces of awkward sizes and compares
// it with want.
func compare(b block.Backend, want []byte) error {
	const piece = 192<<10 + 512 + 7
	buf := make([]byte, piece)
	for off := int64(0); off < int64(len(want)); off += piece {
		n := min(piece, int64(len(want))-off)
		got := buf[:n]
		if m, err := b.ReadAt(got, off); err != nil || m != int(n) {
			return fmt.Errorf("ReadAt(%d bytes at %d) = %d, %v", n, off, m, err)
		}
		if i := firstDiff(got, want[off:off+n]); i >= 0 {
			return fmt.Errorf("byte %d: read %#x, want %#x", off+int64(i), got[i], want[off+int64(i)])
		}
	}
	return nil
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// randomExtent picks a range biased toward the interesting places: odd
// offsets, sector and cluster boundaries, and the end of the device.
func randomExtent(rng *rand.Rand, size int64) (off, n int64) {
	maxLen := []int64{1, 511, 512, 4096, 65536 + 1024, 300 << 10}[rng.IntN(6)]
	n = 1 + rng.Int64N(maxLen)
	switch rng.IntN(4) {
	case 0: // boundary-adjacent
		unit := []int64{512, 4096, 65536, 1 << 20}[rng.IntN(4)]
		off = (rng.Int64N(size/unit) * unit) - rng.Int64N(3)
	case 1: // touching the end
		off = size - n
	default:
		off = rng.Int64N(size)
	}
	off = max(off, 0)
	n = min(n, size-off)
	return off, max(n, 1)
}

func fill(rng *rand.Rand, p []byte) {
	for i := range p {
		p[i] = byte(rng.Uint32() | 1) // never zero, so a lost write shows
	}
}

func checkRoundTrip(b block.Backend, size int64, rng *rand.Rand) error {
	model := make([]byte, size)
	for i := 0; i < 300; i++ {
		off, n := randomExtent(rng, size)
		if rng.IntN(3) == 0 {
			got := make([]byte, n)
			if m, err := b.ReadAt(got, off); err != nil || m != int(n) {
				return fmt.Errorf("ReadAt(%d at %d) = %d, %v", n, off, m, err)
			}
			if j := firstDiff(got, model[off:off+n]); j >= 0 {
				return fmt.Errorf("op %d: read of %d at %d differs at byte %d", i, n, off, off+int64(j))
			}
			continue
		}
		p := make([]byte, n)
		fill(rng, p)
		if m, err := b.WriteAt(p, off); err != nil || m != int(n) {
			return fmt.Errorf("WriteAt(%d at %d) = %d, %v", n, off, m, err)
		}
		copy(model[off:], p)
	}
	return compare(b, model)
}

func checkReadPastEnd(b block.Backend, size int64, rng *rand.Rand) error {
	tail := make([]byte, 1000)
	fill(rng, tail)
	if _, err := b.WriteAt(tail, size-int64(len(tail))); err != nil {
		return fmt.Errorf("WriteAt at the end: %v", err)
	}
	p := make([]byte, 4096)
	n, err := b.ReadAt(p, size-1000)
	if n != 1000 || !errors.Is(err, io.EOF) {
		return fmt.Errorf("ReadAt straddling the end = %d, %v; want 1000, io.EOF", n, err)
	}
	if !bytes.Equal(p[:1000], tail) {
		return errors.New("ReadAt straddling the end returned wrong data")
	}
	for _, off := range []int64{size, size + 1, size + 1<<40} {
		if n, err := b.ReadAt(p[:512], off); n != 0 || !errors.Is(err, io.EOF) {
			return fmt.Errorf("ReadAt(512 at %d), size %d = %d, %v; want 0, io.EOF", off, size, n, err)
		}
	}
	if n, err := b.ReadAt(p[:1], -1); err == nil {
		return fmt.Errorf("ReadAt at offset -1 = %d, nil; want an error", n)
	}
	return nil
}

func checkWritePastEnd(b block.Backend, size int64, rng *rand.Rand) error {
	p := make([]byte, 4096)
	fill(rng, p)
	for _, off := range []int64{size - 4095, size - 1, size, size + 512, size + 1<<40, -1, -4096} {
		n, err := b.WriteAt(p, off)
		if !errors.Is(err, block.ErrOutOfRange) {
			return fmt.Errorf("WriteAt(4096 at %d), size %d = %d, %v; want ErrOutOfRange", off, size, n, err)
		}
	}
	if got := b.Size(); got != size {
		return fmt.Errorf("Size() after failed writes = %d, want %d", got, size)
	}
	// A rejected write writes nothing, not even its in-range part.
	return compare(b, make([]byte, size))
}

func checkVectored(b block.Backend, size int64, rng *rand.Rand) error {
	model := make([]byte, size)
	for i := 0; i < 50; i++ {
		off, n := randomExtent(rng, size)
		bufs := split(rng, make([]byte, n))
		for _, p := range bufs {
			fill(rng, p)
		}
		if m, err := block.WritevAt(b, bufs, off); err != nil || m != int(n) {
			return fmt.Errorf("WritevAt(%d at %d) = %d, %v", n, off, m, err)
		}
		copy(model[off:], bytes.Join(bufs, nil))
		off, n = randomExtent(rng, size)
		got := make([]byte, n)
		if m, err := block.ReadvAt(b, split(rng, got), off); err != nil || m != int(n) {
			return fmt.Errorf("ReadvAt(%d at %d) = %d, %v", n, off, m, err)
		}
		if j := firstDiff(got, model[off:off+n]); j >= 0 {
			return fmt.Errorf("ReadvAt of %d at %d differs at byte %d", n, off, off+int64(j))
		}
	}
	// A vectored write past the end writes nothing.
	bufs := [][]byte{make([]byte, 512), make([]byte, 512)}
	fill(rng, bufs[0])
	fill(rng, bufs[1])
	if _, err := block.WritevAt(b, bufs, size-600); !errors.Is(err, block.ErrOutOfRange) {
		return fmt.Errorf("WritevAt past the end: %v, want ErrOutOfRange", err)
	}
	// A vectored read past the end reports io.EOF with the bytes it got.
	got := [][]byte{make([]byte, 300), make([]byte, 300)}
	if m, err := block.ReadvAt(b, got, size-400); m != 400 || !errors.Is(err, io.EOF) {
		return fmt.Errorf("ReadvAt straddling the end = %d, %v; want 400, io.EOF", m, err)
	}
	return compare(b, model)
}

// checkTryRead checks a block.TryReader: a try that succeeds returns
// exactly what ReadvAt would; one that does not says ErrWouldBlock or
// ErrUnsupported (or fails), and a try running past the end never
// succeeds. Back-ends without the capability pass.
func checkTryRead(b block.Backend, size int64, rng *rand.Rand) error {
	tr, ok := b.(block.TryReader)
	if !ok {
		return nil
	}
	model, err := writeAll(b, size, rng)
	if err != nil {
		return err
	}
	for i := 0; i < 50; i++ {
		off, n := randomExtent(rng, size)
		got := make([]byte, n)
		m, err := tr.TryReadvAt(split(rng, got), off)
		switch {
		case err == nil:
			if m != int(n) {
				return fmt.Errorf("TryReadvAt(%d at %d) = %d, nil: a try that succeeds reads everything", n, off, m)
			}
			if j := firstDiff(got, model[off:off+n]); j >= 0 {
				return fmt.Errorf("TryReadvAt of %d at %d differs at byte %d", n, off, off+int64(j))
			}
		case errors.Is(err, block.ErrWouldBlock), errors.Is(err, errors.ErrUnsupported):
		default:
			return fmt.Errorf("TryReadvAt(%d at %d): %v, want nil, ErrWouldBlock or ErrUnsupported", n, off, err)
		}
	}
	got := [][]byte{make([]byte, 300), make([]byte, 300)}
	if m, err := tr.TryReadvAt(got, size-400); err == nil {
		return fmt.Errorf("TryReadvAt straddling the end = %d, nil; want an error", m)
	}
	return compare(b, model)
}

// split cuts p into a few slices of random lengths (some empty).
func split(rng *rand.Rand, p []byte) [][]byte {
	var out [][]byte
	for len(p) > 0 && len(out) < 7 {
		k := rng.IntN(len(p) + 1)
		out = append(out, p[:k])
		p = p[k:]
	}
	return append(out, p)
}

func checkFlush(b block.Backend, size int64, rng *rand.Rand) error {
	model := make([]byte, size)
	for i := 0; i < 20; i++ {
		off, n := randomExtent(rng, size)
		p := make([]byte, n)
		fill(rng, p)
		if _, err := b.WriteAt(p, off); err != nil {
			return fmt.Errorf("WriteAt: %v", err)
		}
		copy(model[off:], p)
		if err := b.Flush(); err != nil {
			return fmt.Errorf("Flush: %v", err)
		}
	}
	if err := b.Flush(); err != nil {
		return fmt.Errorf("second Flush: %v", err)
	}
	return compare(b, model)
}

// writeAll fills the device with random data, returning the model.
func writeAll(b block.Backend, size int64, rng *rand.Rand) ([]byte, error) {
	model := make([]byte, size)
	fill(rng, model)
	const chunk = 1 << 20
	for off := int64(0); off < size; off += chunk {
		end := min(off+chunk, size)
		if _, err := b.WriteAt(model[off:end], off); err != nil {
			return nil, fmt.Errorf("WriteAt: %v", err)
		}
	}
	return model, nil
}

func checkDiscard(b block.Backend, size int64, rng *rand.Rand) error {
	d, ok := b.(block.Discarder)
	if !ok {
		return nil
	}
	model, err := writeAll(b, size, rng)
	if err != nil {
		return err
	}
	zeroed := make([]bool, size) // bytes that may read as zero
	for i := 0; i < 30; i++ {
		off, n := randomExtent(rng, size)
		if err := d.Discard(off, n); err != nil {
			return fmt.Errorf("Discard(%d, %d): %v", off, n, err)
		}
		for j := off; j < off+n; j++ {
			zeroed[j] = true
		}
	}
	got := make([]byte, size)
	if _, err := b.ReadAt(got, 0); err != nil {
		return fmt.Errorf("ReadAt: %v", err)
	}
	for i := range got {
		if got[i] != model[i] && !(zeroed[i] && got[i] == 0) {
			return fmt.Errorf("byte %d after discards reads %#x, want %#x or (if discarded) 0", i, got[i], model[i])
		}
	}
	// Discarded bytes keep reading the same until written.
	again := make([]byte, size)
	if _, err := b.ReadAt(again, 0); err != nil {
		return fmt.Errorf("ReadAt: %v", err)
	}
	if i := firstDiff(again, got); i >= 0 {
		return fmt.Errorf("byte %d changed between two reads after discard", i)
	}
	for _, r := range [][2]int64{{size - 512, 1024}, {-512, 1024}, {size + 512, 512}} {
		if err := d.Discard(r[0], r[1]); !errors.Is(err, block.ErrOutOfRange) {
			return fmt.Errorf("Discard(%d, %d), size %d: %v, want ErrOutOfRange", r[0], r[1], size, err)
		}
	}
	// Written again, discarded ranges read back what was written.
	model, err = writeAll(b, size, rng)
	if err != nil {
		return err
	}
	return compare(b, model)
}

func checkWriteZeroes(b block.Backend, size int64, rng *rand.Rand) error {
	z, ok := b.(block.ZeroWriter)
	if !ok {
		return nil
	}
	model, err := writeAll(b, size, rng)
	if err != nil {
		return err
	}
	for i := 0; i < 40; i++ {
		off, n := randomExtent(rng, size)
		if err := z.WriteZeroes(off, n, i%2 == 0); err != nil {
			return fmt.Errorf("WriteZeroes(%d, %d, %v): %v", off, n, i%2 == 0, err)
		}
		clear(model[off : off+n])
		if i%8 == 0 { // overwrite part of it again
			off, n = randomExtent(rng, size)
			p := make([]byte, n)
			fill(rng, p)
			if _, err := b.WriteAt(p, off); err != nil {
				return fmt.Errorf("WriteAt: %v", err)
			}
			copy(model[off:], p)
		}
	}
	for _, r := range [][2]int64{{size - 512, 1024}, {-1, 512}} {
		if err := z.WriteZeroes(r[0], r[1], false); !errors.Is(err, block.ErrOutOfRange) {
			return fmt.Errorf("WriteZeroes(%d, %d), size %d: %v, want ErrOutOfRange", r[0], r[1], size, err)
		}
	}
	return compare(b, model)
}

// checkConcurrent runs writers on disjoint stripes of the device, each
// verifying its own stripe, while readers scan the whole device and a
// flusher issues barriers.
func checkConcurrent(b block.Backend, size int64, rng *rand.Rand) error {
	const writers = 4
	stripe := size / writers
	var wg sync.WaitGroup
	errs := make(chan error, writers+3)
	done := make(chan struct{})
	models := make([][]byte, writers)
	for w := 0; w < writers; w++ {
		base := int64(w) * stripe
		models[w] = make([]byte, stripe)
		seed := rng.Uint64()
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 1))
			model := models[w]
			for i := 0; i < 150; i++ {
				off, n := randomExtent(r, stripe)
				if r.IntN(3) == 0 {
					got := make([]byte, n)
					if _, err := b.ReadAt(got, base+off); err != nil {
						errs <- fmt.Errorf("writer %d: ReadAt: %v", w, err)
						return
					}
					if j := firstDiff(got, model[off:off+n]); j >= 0 {
						errs <- fmt.Errorf("writer %d: its stripe reads wrong at byte %d", w, base+off+int64(j))
						return
					}
					continue
				}
				p := make([]byte, n)
				fill(r, p)
				if m, err := b.WriteAt(p, base+off); err != nil || m != int(n) {
					errs <- fmt.Errorf("writer %d: WriteAt(%d at %d) = %d, %v", w, n, base+off, m, err)
					return
				}
				copy(model[off:], p)
			}
		}()
	}
	var bg sync.WaitGroup
	for r := 0; r < 2; r++ {
		bg.Add(1)
		go func() {
			defer bg.Done()
			p := make([]byte, 64<<10)
			for off := int64(0); ; off = (off + int64(len(p))) % size {
				select {
				case <-done:
					return
				default:
				}
				if _, err := b.ReadAt(p, off); err != nil && !errors.Is(err, io.EOF) {
					errs <- fmt.Errorf("reader: ReadAt: %v", err)
					return
				}
			}
		}()
	}
	bg.Add(1)
	go func() {
		defer bg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := b.Flush(); err != nil {
				errs <- fmt.Errorf("Flush: %v", err)
				return
			}
		}
	}()
	wg.Wait()
	close(done)
	bg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	want := make([]byte, size)
	for w := range models {
		copy(want[int64(w)*stripe:], models[w])
	}
	return compare(b, want)
}

func checkResize(b block.Backend, size int64, rng *rand.Rand) error {
	r, ok := b.(block.Resizer)
	if !ok {
		return nil
	}
	model, err := writeAll(b, size, rng)
	if err != nil {
		return err
	}
	grown := size + 1<<20 + 512
	err = r.Resize(grown)
	if errors.Is(err, errors.ErrUnsupported) {
		if b.Size() != size {
			return errors.New("a refused Resize changed Size")
		}
		return compare(b, model)
	}
	if err != nil {
		return fmt.Errorf("Resize(%d): %v", grown, err)
	}
	if got := b.Size(); got != grown {
		return fmt.Errorf("Size() after Resize(%d) = %d", grown, got)
	}
	model = append(model, make([]byte, grown-size)...)
	if err := compare(b, model); err != nil {
		return fmt.Errorf("after growing: %w", err)
	}
	p := make([]byte, 700)
	fill(rng, p)
	if _, err := b.WriteAt(p, grown-700); err != nil {
		return fmt.Errorf("WriteAt in the grown part: %v", err)
	}
	copy(model[grown-700:], p)
	shrunk := size - 1<<20
	switch err := r.Resize(shrunk); {
	case errors.Is(err, errors.ErrUnsupported):
		if b.Size() != grown {
			return errors.New("a refused shrink changed Size")
		}
		return compare(b, model)
	case err != nil:
		return fmt.Errorf("Resize(%d): %v", shrunk, err)
	}
	if got := b.Size(); got != shrunk {
		return fmt.Errorf("Size() after Resize(%d) = %d", shrunk, got)
	}
	if _, err := b.WriteAt(p, shrunk-100); !errors.Is(err, block.ErrOutOfRange) {
		return fmt.Errorf("WriteAt past the shrunk end: %v, want ErrOutOfRange", err)
	}
	// Growing again must not resurrect the cut-off data.
	if err := r.Resize(size); err != nil {
		return fmt.Errorf("Resize(%d) after shrinking: %v", size, err)
	}
	model = append(model[:shrunk:shrunk], make([]byte, size-shrunk)...)
	return compare(b, model)
}

func checkClosed(b block.Backend, size int64, _ *rand.Rand) error {
	if err := b.Close(); err != nil {
		return fmt.Errorf("Close: %v", err)
	}
	p := make([]byte, 512)
	if _, err := b.ReadAt(p, 0); !errors.Is(err, block.ErrClosed) {
		return fmt.Errorf("ReadAt after Close: %v, want ErrClosed", err)
	}
	if _, err := b.WriteAt(p, 0); !errors.Is(err, block.ErrClosed) {
		return fmt.Errorf("WriteAt after Close: %v, want ErrClosed", err)
	}
	if err := b.Flush(); !errors.Is(err, block.ErrClosed) {
		return fmt.Errorf("Flush after Close: %v, want ErrClosed", err)
	}
	return nil
}

func checkReopen(open func() (block.Backend, error), size int64, rng *rand.Rand) error {
	b, err := open()
	if err != nil {
		return fmt.Errorf("open: %v", err)
	}
	model, err := writeAll(b, size, rng)
	if err != nil {
		return err
	}
	if err := b.Flush(); err != nil {
		return fmt.Errorf("Flush: %v", err)
	}
	// Writes after the last Flush are made durable by Close.
	for i := 0; i < 20; i++ {
		off, n := randomExtent(rng, size)
		p := make([]byte, n)
		fill(rng, p)
		if _, err := b.WriteAt(p, off); err != nil {
			return fmt.Errorf("WriteAt: %v", err)
		}
		copy(model[off:], p)
	}
	if z, ok := b.(block.ZeroWriter); ok {
		if err := z.WriteZeroes(4096, 1<<20, true); err != nil {
			return fmt.Errorf("WriteZeroes: %v", err)
		}
		clear(model[4096 : 4096+1<<20])
	}
	if err := b.Close(); err != nil {
		return fmt.Errorf("Close: %v", err)
	}
	b, err = open()
	if err != nil {
		return fmt.Errorf("reopen: %v", err)
	}
	defer b.Close()
	if got := b.Size(); got != size {
		return fmt.Errorf("Size() after reopen = %d, want %d", got, size)
	}
	if err := compare(b, model); err != nil {
		return fmt.Errorf("after reopen: %w", err)
	}
	return nil
}
