package memory

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"sync"
	"testing"
)

func pagesOf(t *testing.T, m *Memory, region int) []uint64 {
	t.Helper()
	b, err := m.TakeDirty(region)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != m.BitmapWords(region) {
		t.Fatalf("bitmap of %d words, BitmapWords says %d", len(b), m.BitmapWords(region))
	}
	return slices.Collect(DirtyPages(b))
}

// Every write path marks exactly the pages it wrote, only while tracking is
// on, and TakeDirty clears what it returns.
func TestDirtyEachWritePath(t *testing.T) {
	const base = 0x100000
	paths := []struct {
		name  string
		gpa   uint64
		write func(m *Memory, gpa uint64) error
		pages []uint64 // pages of region 1 (at base) that must be dirty
	}{
		{"WriteAt", base + 0x1ffe, func(m *Memory, gpa uint64) error {
			_, err := m.WriteAt([]byte("four"), int64(gpa))
			return err
		}, []uint64{1, 2}},
		{"WriteAt across a bitmap word", base + 63*DirtyPageSize, func(m *Memory, gpa uint64) error {
			_, err := m.WriteAt(make([]byte, DirtyPageSize+1), int64(gpa))
			return err
		}, []uint64{63, 64}},
		{"StoreUint16", base + 0x5002, func(m *Memory, gpa uint64) error { return m.StoreUint16(gpa, 1) }, []uint64{5}},
		{"StoreUint32", base + 0x7ffc, func(m *Memory, gpa uint64) error { return m.StoreUint32(gpa, 1) }, []uint64{7}},
		{"SliceForWrite", base + 0x3000, func(m *Memory, gpa uint64) error {
			s, err := m.SliceForWrite(gpa, 3*DirtyPageSize)
			if err == nil {
				s[0] = 1
			}
			return err
		}, []uint64{3, 4, 5}},
		{"MarkDirty", base + 0x40fff, func(m *Memory, gpa uint64) error { return m.MarkDirty(gpa, 1) }, []uint64{0x40}},
		{"empty WriteAt", base + 0x9000, func(m *Memory, gpa uint64) error {
			_, err := m.WriteAt(nil, int64(gpa))
			return err
		}, nil},
		{"reads", base, func(m *Memory, gpa uint64) error {
			if _, err := m.Slice(gpa, 0x10000); err != nil {
				return err
			}
			if _, err := m.LoadUint32(gpa); err != nil {
				return err
			}
			_, err := m.ReadAt(make([]byte, 0x3000), int64(gpa))
			return err
		}, nil},
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			m, err := NewWithOptions([]Layout{{GPA: 0, Size: 0x10000}, {GPA: base, Size: 0x80000}}, Options{Backing: Anonymous})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if err := p.write(m, p.gpa); err != nil {
				t.Fatal(err)
			}
			if got := pagesOf(t, m, 1); len(got) != 0 {
				t.Fatalf("tracking off, yet pages %v dirty", got)
			}
			m.EnableDirtyTracking()
			if err := p.write(m, p.gpa); err != nil {
				t.Fatal(err)
			}
			if got := pagesOf(t, m, 1); !slices.Equal(got, p.pages) {
				t.Errorf("dirty pages %v, want %v", got, p.pages)
			}
			if got := pagesOf(t, m, 0); len(got) != 0 {
				t.Errorf("other region has dirty pages %v", got)
			}
			if got := pagesOf(t, m, 1); len(got) != 0 {
				t.Errorf("TakeDirty did not clear: %v", got)
			}
			m.DisableDirtyTracking()
			if err := p.write(m, p.gpa); err != nil {
				t.Fatal(err)
			}
			if got := pagesOf(t, m, 1); len(got) != 0 {
				t.Errorf("tracking disabled, yet pages %v dirty", got)
			}
		})
	}
}

func TestDirtyFailedWriteMarksNothing(t *testing.T) {
	m := newTwo(t)
	m.EnableDirtyTracking()
	m.WriteAt(make([]byte, 0x2000), 0x10ffe) // runs off the end
	m.StoreUint32(0x10002, 1)                // misaligned
	m.SliceForWrite(0x10000, 0x2001)
	m.MarkDirty(0xfff, 2)
	for i := range m.Regions() {
		if got := pagesOf(t, m, i); len(got) != 0 {
			t.Errorf("region %d: failed writes marked %v", i, got)
		}
	}
}

func TestEnableClearsAndTakeDirtyRejects(t *testing.T) {
	m := newTwo(t)
	m.EnableDirtyTracking()
	m.WriteAt([]byte{1}, 0x10000)
	m.EnableDirtyTracking()
	if got := pagesOf(t, m, 1); len(got) != 0 {
		t.Errorf("re-enabling kept %v", got)
	}
	for _, i := range []int{-1, 2} {
		if _, err := m.TakeDirty(i); err == nil {
			t.Errorf("TakeDirty(%d) succeeded", i)
		}
		if _, err := m.CollectDirty(i, nil); err == nil {
			t.Errorf("CollectDirty(%d) succeeded", i)
		}
		if m.BitmapWords(i) != 0 {
			t.Errorf("BitmapWords(%d) = %d", i, m.BitmapWords(i))
		}
	}
}

// CollectDirty merges the hypervisor's log (here a log that reports vCPU
// writes to pages 0 and 65) with the VMM's writes.
func TestCollectDirty(t *testing.T) {
	m, err := New([]Layout{{GPA: 0, Size: 128 * DirtyPageSize}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.EnableDirtyTracking()
	m.StoreUint16(65*DirtyPageSize, 1)
	m.StoreUint16(100*DirtyPageSize, 1)
	var gotLen int
	b, err := m.CollectDirty(0, func(bm []uint64) error {
		gotLen = len(bm)
		if bm[0] != 0 || bm[1] != 0 {
			return errors.New("bitmap not zeroed")
		}
		bm[0] |= 1
		bm[1] |= 1 << 1
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if gotLen != 2 {
		t.Errorf("getLog got %d words, want 2", gotLen)
	}
	if got := slices.Collect(DirtyPages(b)); !slices.Equal(got, []uint64{0, 65, 100}) {
		t.Errorf("collected %v", got)
	}
	boom := errors.New("boom")
	if _, err := m.CollectDirty(0, func([]uint64) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("getLog error: %v", err)
	}
	if err := MergeDirty(make([]uint64, 2), make([]uint64, 3)); err == nil {
		t.Error("merged bitmaps of different lengths")
	}
	dst := []uint64{1, 0}
	if err := MergeDirty(dst, []uint64{2, 1 << 63}); err != nil || dst[0] != 3 || dst[1] != 1<<63 {
		t.Errorf("merge: %v %#x", err, dst)
	}
}

// A pre-copy migration in miniature: writers write every page once per
// epoch, through all the write paths, while a sender repeatedly takes the
// dirty pages and copies them; after each epoch a last round with the
// writers stopped must leave the copy equal to guest RAM. A lost bit (a
// clear that is not an atomic swap, or a mark made before the write so that
// a TakeDirty slips between them) leaves a stale page, because nothing
// writes that page again in the epoch.
func TestConcurrentWritersLoseNoPage(t *testing.T) {
	const (
		pages   = 128
		writers = 4
	)
	// A lost bit needs a TakeDirty to land in a window of a few
	// instructions; 2000 epochs catch the two broken variants named above
	// in most runs on a 2-core machine.
	epochs := 2000
	if testing.Short() {
		epochs = 200
	}
	m, err := New([]Layout{{GPA: 0, Size: pages * DirtyPageSize}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	src := m.Regions()[0].Data
	m.EnableDirtyTracking()
	dst := make([]byte, len(src))
	copy(dst, src) // the first full pass
	send := func() {
		b, err := m.TakeDirty(0)
		if err != nil {
			t.Fatal(err)
		}
		for p := range DirtyPages(b) {
			m.ReadAt(dst[p*DirtyPageSize:(p+1)*DirtyPageSize], int64(p*DirtyPageSize))
		}
	}
	for e := range epochs {
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				var buf [8]byte
				for p := uint64(w); p < pages; p += writers {
					v := uint64(e)<<32 | p
					binary.LittleEndian.PutUint64(buf[:], v)
					gpa := p * DirtyPageSize
					switch (uint64(e) + p) % 4 {
					case 0:
						m.WriteAt(buf[:], int64(gpa))
					case 1:
						m.StoreUint32(gpa, uint32(v))
					case 2:
						m.StoreUint16(gpa, uint16(v))
					case 3:
						s, _ := m.SliceForWrite(gpa, 8)
						copy(s, buf[:])
						m.MarkDirty(gpa, 8)
					}
				}
			})
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		for running := true; running; {
			select {
			case <-done:
				running = false
			default:
			}
			send()
		}
		send() // the final pass, with the writers stopped
		for p := 0; p < pages; p++ {
			if !bytes.Equal(dst[p*DirtyPageSize:(p+1)*DirtyPageSize], src[p*DirtyPageSize:(p+1)*DirtyPageSize]) {
				t.Fatalf("epoch %d: page %d differs from guest RAM: a write was lost", e, p)
			}
		}
	}
}
