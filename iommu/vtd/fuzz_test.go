package vtd

import (
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/viovmm/vio/memory"
)

// The fuzz targets share one small guest RAM, cleared for every input.
const fuzzRAM = 1 << 20

var (
	fuzzMemOnce sync.Once
	fuzzMem     *memory.Memory
	fuzzMemErr  error
)

func fuzzGuest(t *testing.T, image []byte) *memory.Memory {
	fuzzMemOnce.Do(func() {
		fuzzMem, fuzzMemErr = memory.New([]memory.Layout{{GPA: 0, Size: fuzzRAM}})
	})
	if fuzzMemErr != nil {
		t.Fatal(fuzzMemErr)
	}
	clear(fuzzMem.Regions()[0].Data)
	copy(fuzzMem.Regions()[0].Data, image)
	return fuzzMem
}

func reg64(u *Unit, off, v uint64) {
	u.Write(off, binary.LittleEndian.AppendUint64(nil, v))
}

// validImage is a seed: root table at 0, bus 0's context table at 0x1000
// with device 00:03.0 in domain 1 on a 4-level table at 0x2000 that maps
// IOVA 0x5000 to 0x8000 (and a pass-through 00:04.0).
func validImage() []byte {
	img := make([]byte, 0x10000)
	le := binary.LittleEndian
	le.PutUint64(img[0:], 0x1000|1)
	le.PutUint64(img[0x1000+0x18*16:], 0x2000|1)
	le.PutUint64(img[0x1000+0x18*16+8:], 1<<8|2)
	le.PutUint64(img[0x1000+0x20*16:], 2<<2|1)
	le.PutUint64(img[0x1000+0x20*16+8:], 1<<8|2)
	le.PutUint64(img[0x2000:], 0x3000|3)
	le.PutUint64(img[0x3000:], 0x4000|3)
	le.PutUint64(img[0x4000:], 0x6000|3)
	le.PutUint64(img[0x6000+5*8:], 0x8000|3)
	return img
}

// FuzzTranslate: random tables in guest RAM never make translation panic,
// and whatever a view hands out is guest RAM at the address the
// translation names.
func FuzzTranslate(f *testing.F) {
	f.Add(validImage(), uint64(0), uint16(0x18), uint64(0x5000), uint16(16), false)
	f.Add(validImage(), uint64(0), uint16(0x20), uint64(0x9000), uint16(4096), true)
	f.Add([]byte{1, 0x10}, uint64(0x1000), uint16(0x18), uint64(1<<47), uint16(0), true)
	f.Fuzz(func(t *testing.T, image []byte, root uint64, sid uint16, iova uint64, n uint16, write bool) {
		mem := fuzzGuest(t, image)
		u, err := New(Config{Mem: mem, IOTLBSize: 8, ContextCacheSize: 2})
		if err != nil {
			t.Fatal(err)
		}
		reg64(u, regRTADDR, root)
		u.Write(regGCMD, binary.LittleEndian.AppendUint32(nil, gcmdSRTP))
		u.Write(regGCMD, binary.LittleEndian.AppendUint32(nil, gcmdTE))
		v := u.DMA(sid)
		for range 2 { // the second round runs from the caches
			var s []byte
			if write {
				s, err = v.SliceForWrite(iova, uint64(n))
			} else {
				s, err = v.Slice(iova, uint64(n))
			}
			if err == nil {
				if len(s) != int(n) {
					t.Fatalf("slice of %d bytes for %d", len(s), n)
				}
				u.mu.Lock()
				tr, terr := u.translate(sid, iova, write)
				gpa := tr.gpa
				u.mu.Unlock()
				if terr != nil {
					t.Fatalf("slice succeeded, translation fails: %v", terr)
				}
				ram := mem.Regions()[0]
				if gpa+uint64(n) > ram.End() || n > 0 && &s[0] != &ram.Data[gpa] {
					t.Fatalf("slice for %#x is not guest RAM at %#x", iova, gpa)
				}
			} else if !errors.Is(err, memory.ErrNotMapped) && !errors.Is(err, memory.ErrOutOfRange) {
				t.Fatalf("unexpected error %v", err)
			}
			p := make([]byte, n)
			if write {
				_, err = v.WriteAt(p, int64(iova&(1<<62-1)))
			} else {
				_, err = v.ReadAt(p, int64(iova&(1<<62-1)))
			}
			if err != nil && !errors.Is(err, memory.ErrNotMapped) && !errors.Is(err, memory.ErrOutOfRange) {
				t.Fatalf("unexpected error %v", err)
			}
			v.LoadUint32(iova &^ 3)
			v.StoreUint16(iova&^1, 1)
		}
	})
}

// FuzzRegisters: random register writes, with random guest RAM holding
// whatever the registers point at (tables, invalidation queues), never
// panic and finish in bounded time; faults and events stay consistent.
func FuzzRegisters(f *testing.F) {
	// Seed: enable a queue at 0x10000 with an IOTLB and a wait descriptor.
	img := validImage()
	img = append(img, make([]byte, 0x1000)...)
	binary.LittleEndian.PutUint64(img[0x10000:], 2|1<<4)
	binary.LittleEndian.PutUint64(img[0x10010:], 5|1<<5|1<<4|7<<32)
	binary.LittleEndian.PutUint64(img[0x10018:], 0x9000)
	op := func(off uint16, size byte, v uint64) []byte {
		b := binary.LittleEndian.AppendUint16(nil, off)
		b = append(b, size)
		return binary.LittleEndian.AppendUint64(b, v)
	}
	var ops []byte
	for _, o := range [][]byte{
		op(regRTADDR, 8, 0), op(regGCMD, 4, gcmdSRTP), op(regGCMD, 4, gcmdTE),
		op(regIQA, 8, 0x10000), op(regGCMD, 4, gcmdTE|gcmdQIE), op(regIQT, 8, 0x20),
		op(regFECTL, 4, 0), op(regIECTL, 4, 0), op(regCCMD, 8, 1<<63|1<<61),
		op(regIVA, 8, 0x5000), op(regIOTLB, 8, 1<<63|3<<60|1<<32), op(regFSTS, 4, 0xff),
	} {
		ops = append(ops, o...)
	}
	f.Add(img, ops)
	f.Add([]byte{}, op(regIQT, 8, 0x7fff0))
	f.Fuzz(func(t *testing.T, image, ops []byte) {
		mem := fuzzGuest(t, image)
		sent := 0
		u, err := New(Config{
			Mem: mem, IOTLBSize: 4, ContextCacheSize: 2, CachingMode: len(image)%2 == 1,
			Interrupt: func(uint64, uint32) { sent++ },
		})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; len(ops) >= 11; i++ {
			off := uint64(binary.LittleEndian.Uint16(ops)) % (RegisterSize + 16)
			size := []int{1, 2, 4, 8}[ops[2]&3]
			val := ops[3:11]
			ops = ops[11:]
			if i%4 == 3 {
				u.Read(off, make([]byte, size))
				continue
			}
			before := u.Stats().Descriptors
			u.Write(off, val[:size])
			if n := u.Stats().Descriptors - before; n > 256<<7 {
				t.Fatalf("one register write ran %d descriptors, more than the largest queue", n)
			}
			// A DMA access now and then, through a device of bus 0.
			if off%3 == 0 {
				v := u.DMA(uint16(val[0]))
				v.ReadAt(make([]byte, 64), int64(binary.LittleEndian.Uint32(val[4:8])))
			}
			u.mu.Lock()
			if h, n := u.r.iqh>>4, uint64(256)<<(u.r.iqa&7); h >= n && u.r.iqh != 0 {
				t.Fatalf("IQH %#x beyond a queue of %d", u.r.iqh, n)
			}
			pending := false
			for _, r := range u.r.frcd {
				pending = pending || r[1]&frcdF != 0
			}
			if pending != (u.fsts()&fstsPPF != 0) {
				t.Fatalf("PPF %v with records pending %v", !pending, pending)
			}
			u.mu.Unlock()
		}
		_ = sent
	})
}

// FuzzWalk: over random tables, Tables.Walk reports leaves in ascending,
// non-overlapping order, each overlapping the range and each exactly what
// a translation of its address finds (page, permissions), and it stops at
// its budget.
func FuzzWalk(f *testing.F) {
	f.Add(validImage(), uint64(0), uint16(0x18), uint64(0), uint64(1<<48-1), uint16(2000))
	f.Add(validImage(), uint64(0), uint16(0x18), uint64(0x5000), uint64(0x5000), uint16(5))
	f.Fuzz(func(t *testing.T, image []byte, root uint64, sid uint16, first, last uint64, budget uint16) {
		mem := fuzzGuest(t, image)
		u, err := New(Config{Mem: mem})
		if err != nil {
			t.Fatal(err)
		}
		reg64(u, regRTADDR, root)
		u.Write(regGCMD, binary.LittleEndian.AppendUint32(nil, gcmdSRTP))
		u.Write(regGCMD, binary.LittleEndian.AppendUint32(nil, gcmdTE))
		u.mu.Lock()
		defer u.mu.Unlock()
		tb := &Tables{}
		tb.u.Store(u)
		c := tb.Context(sid)
		var got []Mapping
		next, err := tb.Walk(c, first, last, int(budget), func(m Mapping) { got = append(got, m) })
		if err != nil && !errors.Is(err, ErrWalkBudget) {
			t.Fatalf("walk: %v", err)
		}
		if c.Mode != ContextTranslated && (len(got) > 0 || err != nil) {
			t.Fatalf("a %v context walked: %d leaves, %v", c.Mode, len(got), err)
		}
		if len(got) > int(budget) {
			t.Fatalf("%d leaves from a budget of %d entries", len(got), budget)
		}
		e, _ := u.context(sid)
		for i, m := range got {
			if m.Size != 1<<12 && m.Size != 1<<21 && m.Size != 1<<30 || m.IOVA%m.Size != 0 || m.GPA%m.Size != 0 {
				t.Fatalf("leaf %+v", m)
			}
			if m.IOVA+m.Size-1 < first || m.IOVA > last || err != nil && m.IOVA >= next {
				t.Fatalf("leaf %+v outside [%#x, %#x] (next %#x)", m, first, last, next)
			}
			if i > 0 && got[i-1].IOVA+got[i-1].Size > m.IOVA {
				t.Fatalf("leaves out of order: %+v then %+v", got[i-1], m)
			}
			base, level, r, w, reason := u.walk(e, m.IOVA)
			if reason != 0 || base != m.GPA || uint64(1)<<pageShift(level) != m.Size || r != m.Read || w != m.Write {
				t.Fatalf("walk reports %+v, translation finds %#x level %d r %v w %v reason %#x", m, base, level, r, w, reason)
			}
		}
	})
}
