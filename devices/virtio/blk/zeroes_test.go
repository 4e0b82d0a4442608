package blk_test

import (
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/devices/virtio/blk"
)

// slowZeroes is a 64 GiB back-end that stores nothing: it counts the
// zeroes asked of it, and its first WriteZeroes call blocks until a reset
// drains it (Reset calls Drain after it has told the device to stop), as
// a slow disk zeroing a large range would keep the reset waiting.
type slowZeroes struct {
	entered chan struct{}
	drained chan struct{}
	once    sync.Once

	mu     sync.Mutex
	calls  int
	zeroed int64
}

var (
	_ block.ZeroWriter = (*slowZeroes)(nil)
	_ block.Drainer    = (*slowZeroes)(nil)
)

func (*slowZeroes) ReadAt(p []byte, off int64) (int, error)  { clear(p); return len(p), nil }
func (*slowZeroes) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (*slowZeroes) Flush() error                             { return nil }
func (*slowZeroes) Size() int64                              { return 64 << 30 }
func (*slowZeroes) Close() error                             { return nil }

func (z *slowZeroes) WriteZeroes(off, n int64, unmap bool) error {
	z.mu.Lock()
	z.calls++
	z.zeroed += n
	first := z.calls == 1
	z.mu.Unlock()
	if first {
		close(z.entered)
		<-z.drained
	}
	return nil
}

func (z *slowZeroes) Drain(on bool) {
	if on {
		z.once.Do(func() { close(z.drained) })
	}
}

// TestResetStopsHugeWriteZeroes: one WRITE_ZEROES of 32 segments of 1 GiB
// goes to the back-end in chunks, and a reset in the middle stops it at
// the next chunk instead of zeroing the remaining 32 GiB first.
func TestResetStopsHugeWriteZeroes(t *testing.T) {
	be := &slowZeroes{entered: make(chan struct{}), drained: make(chan struct{})}
	defer be.Drain(true)
	m := newMachine(t, be, blk.Config{})
	m.start(t, blk.FeatureWriteZeroes, false)
	segs := [][]byte{header(blk.TypeWriteZeroes, 0)}
	for i := range uint64(32) {
		segs = append(segs, segment(i<<21, 1<<21, 0)) // 1 GiB each
	}
	m.submit(t, 0, segs, []uint32{1}, false)
	select {
	case <-be.entered:
	case <-time.After(wait):
		t.Fatal("the write zeroes never reached the back-end")
	}
	reset := make(chan error, 1)
	go func() { reset <- m.guest.Reset() }()
	select {
	case err := <-reset:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("reset waits for the write zeroes")
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	if be.calls != 1 || be.zeroed > 64<<20 {
		t.Fatalf("after the reset the back-end was asked for %d bytes of zeroes in %d calls; want one chunk of at most 64 MiB", be.zeroed, be.calls)
	}
}
