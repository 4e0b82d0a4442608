package blk_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/pci/pcitest"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

const (
	msiAddr   = 0xfee00000
	queueBase = 0x100000
	queueSpan = 0x400000
	dataSize  = 0x300000
	wait      = 10 * time.Second // bounds a hang; never a synchronization
)

// machine is one virtio-blk function on a PCI root, driven through the
// transport by virtiopcitest.
type machine struct {
	mem    *memory.Memory
	router *pcitest.Router
	dev    *blk.Device
	tr     *virtiopci.Transport
	guest  *virtiopcitest.Guest
	queues []*queuetest.Driver
}

func newMachine(t testing.TB, be block.Backend, cfg blk.Config) *machine {
	t.Helper()
	dev, err := blk.New(be, cfg)
	if err != nil {
		t.Fatal(err)
	}
	mc := virtiopcitest.NewMachine(t, dev, 64<<20, 1024)
	return &machine{mem: mc.Mem, router: mc.Router, dev: dev, tr: mc.Transport, guest: mc.Guest}
}

// start negotiates feat (plus VERSION_1) and sets up every queue with its
// own MSI-X vector (vector 0 is the configuration vector).
func (m *machine) start(t testing.TB, feat uint64, eventIdx bool) {
	t.Helper()
	g := m.guest
	feat |= virtio.FeatureVersion1 | virtio.FeatureIndirectDesc
	if eventIdx {
		feat |= virtio.FeatureEventIdx
	}
	if err := g.Negotiate(feat); err != nil {
		t.Fatal(err)
	}
	n := m.tr.NumQueues()
	for v := 0; v <= n; v++ {
		g.ProgramMSIX(v, msiAddr, uint32(0x30+v))
	}
	g.EnableMSIX(true)
	g.SetConfigVector(0)
	m.queues = m.queues[:0]
	for i := range n {
		d, err := g.SetupQueue(virtiopcitest.QueueConfig{Index: i, Vector: uint16(i + 1),
			Base: queueBase + uint64(i)*queueSpan, DataSize: dataSize, EventIdx: eventIdx})
		if err != nil {
			t.Fatal(err)
		}
		m.queues = append(m.queues, d)
	}
	g.SetStatus(virtio.StatusDriverOK)
	if s := g.Status(); s&virtio.StatusDriverOK == 0 || s&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatalf("status %#x", s)
	}
}

// submit makes a request available on queue q and kicks if needed.
func (m *machine) submit(t *testing.T, q int, out [][]byte, in []uint32, indirect bool) uint16 {
	t.Helper()
	d := m.queues[q]
	add := d.Add
	if indirect {
		add = d.AddIndirect
	}
	h, err := add(out, in)
	if err != nil {
		t.Fatal(err)
	}
	if d.NeedsKick() {
		m.guest.Kick(q)
	}
	return h
}

// collect waits for n used entries on queue q.
func (m *machine) collect(t testing.TB, q, n int) []queuetest.Used {
	t.Helper()
	var us []queuetest.Used
	for len(us) < n {
		u, ok, err := m.queues[q].GetUsed()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			us = append(us, u)
			continue
		}
		if _, err := m.router.Wait(wait); err != nil {
			t.Fatalf("waiting for %d used entries, have %d: %v", n, len(us), err)
		}
	}
	return us
}

// do runs one request to completion and returns its used entry.
func (m *machine) do(t *testing.T, out [][]byte, in []uint32) queuetest.Used {
	t.Helper()
	h := m.submit(t, 0, out, in, false)
	u := m.collect(t, 0, 1)[0]
	if u.ID != h {
		t.Fatalf("used id %d, submitted %d", u.ID, h)
	}
	return u
}

func header(typ uint32, sector uint64) []byte {
	b := make([]byte, blk.HeaderSize)
	binary.LittleEndian.PutUint32(b, typ)
	binary.LittleEndian.PutUint64(b[8:], sector)
	return b
}

func segment(sector uint64, n, flags uint32) []byte {
	b := make([]byte, blk.SegmentSize)
	binary.LittleEndian.PutUint64(b, sector)
	binary.LittleEndian.PutUint32(b[8:], n)
	binary.LittleEndian.PutUint32(b[12:], flags)
	return b
}

// status checks a used entry whose writable area was want bytes: the
// length is all of it and the last byte is the status.
func status(t *testing.T, u queuetest.Used, wantLen int) byte {
	t.Helper()
	if int(u.Len) != wantLen || len(u.Data) != wantLen {
		t.Fatalf("used len %d (data %d), want %d", u.Len, len(u.Data), wantLen)
	}
	return u.Data[wantLen-1]
}

func (m *machine) read(t *testing.T, sector uint64, n int) ([]byte, byte) {
	t.Helper()
	u := m.do(t, [][]byte{header(blk.TypeIn, sector)}, []uint32{uint32(n), 1})
	st := status(t, u, n+1)
	return u.Data[:n], st
}

func (m *machine) write(t *testing.T, sector uint64, data []byte) byte {
	t.Helper()
	u := m.do(t, [][]byte{header(blk.TypeOut, sector), data}, []uint32{1})
	return status(t, u, 1)
}

func pattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestConfigSpace(t *testing.T) {
	be := blocktest.NewMem(10<<20 + 300) // a partial sector at the end is not addressable
	m := newMachine(t, be, blk.Config{NumQueues: 2, QueueSize: 128, BlockSize: 4096, PhysicalBlockExp: 1, OptIOSize: 16})
	g := m.guest
	if id := g.CF8.Read(g.BDF, 0, 4); id != 0x1042<<16|0x1af4 {
		t.Fatalf("id %#x", id)
	}
	f := g.DeviceFeatures()
	for _, want := range []uint64{blk.FeatureFlush, blk.FeatureSegMax, blk.FeatureBlkSize, blk.FeatureMQ,
		blk.FeatureDiscard, blk.FeatureWriteZeroes, blk.FeatureTopology, blk.FeatureConfigWCE,
		virtio.FeatureVersion1, virtio.FeatureEventIdx, virtio.FeatureIndirectDesc} {
		if f&want == 0 {
			t.Errorf("feature %#x not offered (%#x)", want, f)
		}
	}
	if f&blk.FeatureRO != 0 || f&blk.FeatureSizeMax != 0 {
		t.Errorf("offered %#x", f)
	}
	if c := g.ReadDeviceConfig(0, 4) | g.ReadDeviceConfig(4, 4)<<32; c != 10<<20/512 {
		t.Errorf("capacity %d", c)
	}
	for _, c := range []struct {
		off  uint64
		n    int
		want uint64
	}{
		{12, 4, 126},     // seg_max: queue size minus header and status
		{20, 4, 4096},    // blk_size
		{24, 1, 1},       // physical_block_exp
		{28, 4, 16},      // opt_io_size
		{32, 1, 1},       // writeback
		{34, 2, 2},       // num_queues
		{40, 4, 32},      // max_discard_seg
		{44, 4, 8},       // discard_sector_alignment: blocks of 4096
		{48, 4, 1 << 21}, // max_write_zeroes_sectors
		{56, 1, 1},       // write_zeroes_may_unmap
		{60, 4, 0},       // beyond the structure
		{0x800, 4, 0},
	} {
		if v := g.ReadDeviceConfig(c.off, c.n); v != c.want {
			t.Errorf("config[%d:%d] = %d, want %d", c.off, c.off+uint64(c.n), v, c.want)
		}
	}
	g.WriteDeviceConfig(0, 4, 0) // capacity is read-only
	if c := g.ReadDeviceConfig(0, 4); c != 10<<20/512 {
		t.Errorf("capacity written: %d", c)
	}
	if _, err := blk.New(be, blk.Config{Serial: "123456789012345678901"}); err == nil {
		t.Error("21-byte serial accepted")
	}
	if _, err := blk.New(be, blk.Config{BlockSize: 1000}); err == nil {
		t.Error("block size 1000 accepted")
	}
}

// TestRoundTripRawFile writes through the device and checks the bytes in
// the backing file, then changes the file and reads through the device.
func TestRoundTripRawFile(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		t.Run(fmt.Sprint("eventIdx=", eventIdx), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "disk.raw")
			f, err := raw.Create(path, 1<<20, raw.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			m := newMachine(t, f, blk.Config{})
			m.start(t, blk.FeatureFlush|blk.FeatureSegMax, eventIdx)

			data := pattern(1, 8192)
			// Split the data over three descriptors of odd sizes, and the
			// header over two: the device must not depend on the layout.
			h := header(blk.TypeOut, 100)
			u := m.do(t, [][]byte{h[:5], h[5:], data[:1000], data[1000:4096], data[4096:]}, []uint32{1})
			if st := status(t, u, 1); st != blk.StatusOK {
				t.Fatalf("write status %d", st)
			}
			if st := m.do(t, [][]byte{header(blk.TypeFlush, 0)}, []uint32{1}); status(t, st, 1) != blk.StatusOK {
				t.Fatal("flush failed")
			}
			file, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(file[100*512:100*512+8192], data) {
				t.Fatal("file does not hold the written data")
			}
			if !bytes.Equal(file[:100*512], make([]byte, 100*512)) || !bytes.Equal(file[116*512:], make([]byte, len(file)-116*512)) {
				t.Fatal("write spilled outside its sectors")
			}

			// Now the other way: bytes put in the file come out of the device,
			// through an indirect chain with the data split in two.
			other := pattern(2, 4096)
			if _, err := f.WriteAt(other, 2040*512); err != nil {
				t.Fatal(err)
			}
			hd := m.submit(t, 0, [][]byte{header(blk.TypeIn, 2040)}, []uint32{512, 3584, 1}, true)
			u = m.collect(t, 0, 1)[0]
			if u.ID != hd || status(t, u, 4097) != blk.StatusOK || !bytes.Equal(u.Data[:4096], other) {
				t.Fatalf("read through device: id %d status %d, data match %v", u.ID, u.Data[len(u.Data)-1], bytes.Equal(u.Data[:4096], other))
			}
			// The last sector of the disk is addressable; one past it is not.
			if _, st := m.read(t, 2047, 512); st != blk.StatusOK {
				t.Errorf("last sector: status %d", st)
			}
			if _, st := m.read(t, 2047, 1024); st != blk.StatusIOErr {
				t.Errorf("read past end: status %d", st)
			}
			s := m.dev.Stats()
			if s.Reads != 3 || s.Writes != 1 || s.Flushes != 1 || s.ReadBytes != 4096+512 || s.WrittenBytes != 8192 || s.IOErrors != 1 {
				t.Errorf("stats %+v", s)
			}
			if s.Interrupts == 0 || s.Notifications == 0 {
				t.Errorf("no interrupts or notifications counted: %+v", s)
			}
		})
	}
}

// countingFlush wraps a back-end and counts Flush calls.
type countingFlush struct {
	block.Backend
	mu      sync.Mutex
	flushes int
}

func (c *countingFlush) Flush() error {
	c.mu.Lock()
	c.flushes++
	c.mu.Unlock()
	return c.Backend.Flush()
}

func (c *countingFlush) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushes
}

func TestFlushAndCacheModes(t *testing.T) {
	be := &countingFlush{Backend: blocktest.NewMem(1 << 20)}
	m := newMachine(t, be, blk.Config{})

	// FLUSH negotiated, no CONFIG_WCE: writeback; only FLUSH flushes.
	m.start(t, blk.FeatureFlush, true)
	m.write(t, 0, make([]byte, 512))
	if n := be.count(); n != 0 {
		t.Fatalf("%d flushes in writeback mode", n)
	}
	if st := status(t, m.do(t, [][]byte{header(blk.TypeFlush, 0)}, []uint32{1}), 1); st != blk.StatusOK {
		t.Fatalf("flush status %d", st)
	}
	if n := be.count(); n != 1 {
		t.Fatalf("FLUSH made %d back-end flushes", n)
	}

	// Without FLUSH the device is writethrough: every write is flushed, and
	// a FLUSH command is unsupported.
	m.start(t, 0, true)
	m.write(t, 0, make([]byte, 512))
	if n := be.count(); n != 2 {
		t.Fatalf("writethrough write: %d flushes in all", n)
	}
	if st := status(t, m.do(t, [][]byte{header(blk.TypeFlush, 0)}, []uint32{1}), 1); st != blk.StatusUnsupp {
		t.Fatalf("unnegotiated flush status %d", st)
	}

	// CONFIG_WCE: the driver turns the cache off through writeback.
	m.start(t, blk.FeatureFlush|blk.FeatureConfigWCE, false)
	m.write(t, 0, make([]byte, 512))
	if n := be.count(); n != 2 {
		t.Fatalf("writeback with WCE flushed: %d", n)
	}
	m.guest.WriteDeviceConfig(32, 1, 0)
	if v := m.guest.ReadDeviceConfig(32, 1); v != 0 {
		t.Fatalf("writeback reads %d", v)
	}
	m.write(t, 0, make([]byte, 512))
	if n := be.count(); n != 3 {
		t.Fatalf("writethrough via WCE: %d flushes", n)
	}
	// A reset restores the configured mode.
	m.guest.Reset()
	if v := m.guest.ReadDeviceConfig(32, 1); v != 1 {
		t.Errorf("writeback after reset %d", v)
	}
}

func TestGetID(t *testing.T) {
	for _, serial := range []string{"vio-disk-1", "12345678901234567890"} {
		m := newMachine(t, blocktest.NewMem(1<<20), blk.Config{Serial: serial})
		m.start(t, 0, true)
		u := m.do(t, [][]byte{header(blk.TypeGetID, 0)}, []uint32{blk.IDBytes, 1})
		if status(t, u, blk.IDBytes+1) != blk.StatusOK {
			t.Fatal("GET_ID failed")
		}
		want := make([]byte, blk.IDBytes)
		copy(want, serial)
		if !bytes.Equal(u.Data[:blk.IDBytes], want) {
			t.Errorf("serial %q, want %q", u.Data[:blk.IDBytes], want)
		}
		// A short buffer gets what fits.
		u = m.do(t, [][]byte{header(blk.TypeGetID, 0)}, []uint32{4, 1})
		if status(t, u, 5) != blk.StatusOK || string(u.Data[:4]) != serial[:4] {
			t.Errorf("short GET_ID: %q", u.Data)
		}
	}
}

func TestDiscardWriteZeroes(t *testing.T) {
	be := blocktest.NewMem(1 << 20)
	m := newMachine(t, be, blk.Config{MaxDiscardSegments: 4, MaxWriteZeroesSectors: 64})
	m.start(t, blk.FeatureDiscard|blk.FeatureWriteZeroes|blk.FeatureFlush, true)
	all := pattern(3, 1<<20)
	if _, err := be.WriteAt(all, 0); err != nil {
		t.Fatal(err)
	}
	zeroCmd := func(typ uint32, segs ...[]byte) byte {
		return status(t, m.do(t, append([][]byte{header(typ, 0)}, segs...), []uint32{1}), 1)
	}
	// Write zeroes, with and without unmap, in one request of two segments.
	if st := zeroCmd(blk.TypeWriteZeroes, segment(10, 4, 0), segment(40, 8, 1)); st != blk.StatusOK {
		t.Fatalf("write zeroes: %d", st)
	}
	for _, r := range [][2]int{{10, 4}, {40, 8}} {
		got, st := m.read(t, uint64(r[0]), r[1]*512)
		if st != blk.StatusOK || !bytes.Equal(got, make([]byte, r[1]*512)) {
			t.Errorf("sectors %v not zero after WRITE_ZEROES", r)
		}
	}
	if got, _ := m.read(t, 14, 512); !bytes.Equal(got, all[14*512:15*512]) {
		t.Error("WRITE_ZEROES touched the next sector")
	}
	if st := zeroCmd(blk.TypeDiscard, segment(100, 16, 0)); st != blk.StatusOK {
		t.Errorf("discard: %d", st)
	}
	for _, c := range []struct {
		name string
		typ  uint32
		segs [][]byte
		want byte
	}{
		{"discard with unmap", blk.TypeDiscard, [][]byte{segment(0, 1, 1)}, blk.StatusUnsupp},
		{"reserved flags", blk.TypeWriteZeroes, [][]byte{segment(0, 1, 2)}, blk.StatusUnsupp},
		{"too many segments", blk.TypeDiscard, [][]byte{segment(0, 1, 0), segment(1, 1, 0), segment(2, 1, 0), segment(3, 1, 0), segment(4, 1, 0)}, blk.StatusUnsupp},
		{"beyond capacity", blk.TypeWriteZeroes, [][]byte{segment(2047, 2, 0)}, blk.StatusIOErr},
		{"sector overflow", blk.TypeDiscard, [][]byte{segment(math.MaxUint64, 2, 0)}, blk.StatusIOErr},
		{"above max sectors", blk.TypeWriteZeroes, [][]byte{segment(0, 65, 0)}, blk.StatusIOErr},
		{"no segment", blk.TypeDiscard, nil, blk.StatusIOErr},
		{"partial segment", blk.TypeDiscard, [][]byte{segment(0, 1, 0)[:10]}, blk.StatusIOErr},
		// A good segment followed by a bad one: nothing happens.
		{"one bad segment", blk.TypeWriteZeroes, [][]byte{segment(200, 1, 0), segment(5000, 1, 0)}, blk.StatusIOErr},
	} {
		if st := zeroCmd(c.typ, c.segs...); st != c.want {
			t.Errorf("%s: status %d, want %d", c.name, st, c.want)
		}
	}
	if got, _ := m.read(t, 200, 512); !bytes.Equal(got, all[200*512:201*512]) {
		t.Error("a rejected WRITE_ZEROES request changed data")
	}
	if s := m.dev.Stats(); s.Discards != 6 || s.WriteZeroes != 5 || s.Unsupported != 3 || s.IOErrors != 6 {
		t.Errorf("stats %+v", s)
	}
	// Without the features negotiated, the commands are unsupported.
	m.start(t, 0, true)
	if st := zeroCmd(blk.TypeDiscard, segment(0, 1, 0)); st != blk.StatusUnsupp {
		t.Errorf("unnegotiated discard: %d", st)
	}
}

// noZero hides the back-end's ZeroWriter and Discarder: the device writes
// zeroes itself and does not offer discard.
type noZero struct{ b block.Backend }

func (n noZero) ReadAt(p []byte, off int64) (int, error)  { return n.b.ReadAt(p, off) }
func (n noZero) WriteAt(p []byte, off int64) (int, error) { return n.b.WriteAt(p, off) }
func (n noZero) Flush() error                             { return n.b.Flush() }
func (n noZero) Size() int64                              { return n.b.Size() }
func (n noZero) Close() error                             { return n.b.Close() }

func TestWriteZeroesFallback(t *testing.T) {
	mem := blocktest.NewMem(1 << 20)
	mem.WriteAt(pattern(4, 1<<20), 0)
	m := newMachine(t, noZero{mem}, blk.Config{})
	f := m.guest.DeviceFeatures()
	if f&blk.FeatureDiscard != 0 || f&blk.FeatureWriteZeroes == 0 {
		t.Fatalf("features %#x", f)
	}
	if v := m.guest.ReadDeviceConfig(56, 1); v != 0 {
		t.Errorf("write_zeroes_may_unmap %d without a ZeroWriter", v)
	}
	m.start(t, blk.FeatureWriteZeroes, true)
	u := m.do(t, [][]byte{header(blk.TypeWriteZeroes, 0), segment(1, 300, 1)}, []uint32{1})
	if status(t, u, 1) != blk.StatusOK {
		t.Fatal("write zeroes failed")
	}
	got := make([]byte, 302*512)
	mem.ReadAt(got, 0)
	if !bytes.Equal(got[512:301*512], make([]byte, 300*512)) || bytes.Equal(got[:512], make([]byte, 512)) || bytes.Equal(got[301*512:], make([]byte, 512)) {
		t.Error("wrong range zeroed")
	}
}

func TestReadOnly(t *testing.T) {
	for _, viaBackend := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "ro.raw")
		orig := pattern(5, 64<<10)
		if err := os.WriteFile(path, orig, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := raw.Open(path, raw.Options{ReadOnly: viaBackend})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		m := newMachine(t, f, blk.Config{ReadOnly: !viaBackend})
		feat := m.guest.DeviceFeatures()
		if feat&blk.FeatureRO == 0 || feat&(blk.FeatureDiscard|blk.FeatureWriteZeroes) != 0 {
			t.Fatalf("features %#x", feat)
		}
		m.start(t, blk.FeatureRO|blk.FeatureFlush, true)
		if st := m.write(t, 0, make([]byte, 1024)); st != blk.StatusIOErr {
			t.Errorf("write to read-only disk: status %d", st)
		}
		u := m.do(t, [][]byte{header(blk.TypeWriteZeroes, 0), segment(0, 4, 0)}, []uint32{1})
		if st := status(t, u, 1); st != blk.StatusUnsupp {
			t.Errorf("write zeroes on read-only disk: %d", st)
		}
		if got, st := m.read(t, 0, 1024); st != blk.StatusOK || !bytes.Equal(got, orig[:1024]) {
			t.Errorf("read: %d", st)
		}
		if b, _ := os.ReadFile(path); !bytes.Equal(b, orig) {
			t.Error("read-only file changed")
		}
	}
}

func TestOutOfRange(t *testing.T) {
	m := newMachine(t, blocktest.NewMem(1<<20), blk.Config{})
	m.start(t, 0, true)
	for _, c := range []struct {
		sector uint64
		n      int
	}{
		{2048, 512}, {2047, 1024}, {2049, 0}, {math.MaxUint64, 512}, {math.MaxUint64 / 512, 1024}, {1 << 55, 512},
	} {
		if _, st := m.read(t, c.sector, c.n); st != blk.StatusIOErr {
			t.Errorf("read %d sectors at %d: status %d", c.n/512, c.sector, st)
		}
		if c.n > 0 {
			if st := m.write(t, c.sector, make([]byte, c.n)); st != blk.StatusIOErr {
				t.Errorf("write %d sectors at %d: status %d", c.n/512, c.sector, st)
			}
		}
	}
}

// TestMalformed sends requests a correct driver never makes. Each gets its
// defined answer and the device goes on serving.
func TestMalformed(t *testing.T) {
	be := blocktest.NewMem(1 << 20)
	m := newMachine(t, be, blk.Config{SizeMax: 4096})
	m.start(t, blk.FeatureSizeMax, true)
	for _, c := range []struct {
		name    string
		out     [][]byte
		in      []uint32
		wantLen int
		want    byte
	}{
		{"short header", [][]byte{header(blk.TypeIn, 0)[:12]}, []uint32{512, 1}, 513, blk.StatusIOErr},
		{"no header", nil, []uint32{512, 1}, 513, blk.StatusIOErr},
		{"read not whole sectors", [][]byte{header(blk.TypeIn, 0)}, []uint32{500, 1}, 501, blk.StatusIOErr},
		{"write not whole sectors", [][]byte{header(blk.TypeOut, 0), make([]byte, 513)}, []uint32{1}, 1, blk.StatusIOErr},
		{"unknown type", [][]byte{header(99, 0)}, []uint32{1}, 1, blk.StatusUnsupp},
		{"get lifetime", [][]byte{header(blk.TypeGetLifetime, 0)}, []uint32{16, 1}, 17, blk.StatusUnsupp},
		{"secure erase", [][]byte{header(blk.TypeSecureErase, 0), segment(0, 1, 0)}, []uint32{1}, 1, blk.StatusUnsupp},
		{"discard not negotiated", [][]byte{header(blk.TypeDiscard, 0), segment(0, 1, 0)}, []uint32{1}, 1, blk.StatusUnsupp},
		{"buffer above size_max", [][]byte{header(blk.TypeOut, 0), make([]byte, 8192)}, []uint32{1}, 1, blk.StatusIOErr},
		// Status sitting in the last byte of a larger writable buffer.
		{"status in data buffer", [][]byte{header(blk.TypeIn, 0)}, []uint32{1025}, 1025, blk.StatusOK},
	} {
		u := m.do(t, c.out, c.in)
		if st := status(t, u, c.wantLen); st != c.want {
			t.Errorf("%s: status %d, want %d", c.name, st, c.want)
		}
	}
	// No writable byte: no status can be written, the chain comes back
	// with length 0.
	u := m.do(t, [][]byte{header(blk.TypeOut, 0), make([]byte, 512)}, nil)
	if u.Len != 0 {
		t.Errorf("chain without status: used len %d", u.Len)
	}
	if !bytes.Equal(be.Bytes()[:512], make([]byte, 512)) {
		t.Error("the request without a status was executed")
	}
	// A chain the core rejects (readable after writable) never reaches the
	// device but is returned with length 0; the queue goes on.
	d := m.queues[0]
	a, _ := d.Alloc(64)
	for i := uint16(10); i < 12; i++ {
		if !d.Reserve(i) {
			t.Fatal("slot busy")
		}
	}
	d.WriteDesc(10, queuetest.Desc{Addr: a, Len: 1, Flags: queuetest.FlagWrite | queuetest.FlagNext, Next: 11})
	d.WriteDesc(11, queuetest.Desc{Addr: a + 8, Len: 16})
	d.Publish(10)
	m.guest.Kick(0)
	deadline := time.Now().Add(wait)
	for {
		// queuetest did not make this chain, so it reports the used id
		// as unknown; the entry itself is what is checked.
		u, ok, _ := d.GetUsed()
		if ok {
			if u.ID != 10 || u.Len != 0 {
				t.Fatalf("bad chain returned as %+v", u)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("bad chain never returned")
		}
		m.router.Wait(10 * time.Millisecond)
	}
	if data, st := m.read(t, 0, 512); st != blk.StatusOK || len(data) != 512 {
		t.Fatalf("after bad chain: status %d", st)
	}
	s := m.dev.Stats()
	if s.NoStatus != 1 || s.BadChains != 1 || s.IOErrors != 5 || s.Unsupported != 4 {
		t.Errorf("stats %+v", s)
	}
	if st := m.guest.Status(); st&virtio.StatusDeviceNeedsReset != 0 {
		t.Errorf("malformed requests broke the device: status %#x", st)
	}
}

// gate is a back-end whose reads block until want of them are in progress
// at once: a test that passes through it proves the device runs requests
// of one queue concurrently.
type gate struct {
	block.Backend
	want    int
	mu      sync.Mutex
	waiting int
	open    chan struct{}
}

func (g *gate) ReadAt(p []byte, off int64) (int, error) {
	g.mu.Lock()
	g.waiting++
	if g.waiting == g.want {
		close(g.open)
	}
	g.mu.Unlock()
	select {
	case <-g.open:
	case <-time.After(wait):
		return 0, fmt.Errorf("gate: only %d concurrent reads", g.want)
	}
	return g.Backend.ReadAt(p, off)
}

func TestConcurrentWithinQueue(t *testing.T) {
	const workers = 4
	g := &gate{Backend: noZero{blocktest.NewMem(1 << 20)}, want: workers, open: make(chan struct{})}
	m := newMachine(t, g, blk.Config{Workers: workers})
	m.start(t, 0, true)
	for i := range workers {
		m.submit(t, 0, [][]byte{header(blk.TypeIn, uint64(i))}, []uint32{512, 1}, false)
	}
	for _, u := range m.collect(t, 0, workers) {
		if st := status(t, u, 513); st != blk.StatusOK {
			t.Errorf("status %d: the reads did not run concurrently", st)
		}
	}
	if s := m.dev.Stats(); s.MaxInFlight < workers {
		t.Errorf("max in flight %d", s.MaxInFlight)
	}
}

// TestManyInFlight keeps two queues full of random reads and writes of
// disjoint regions and checks every result against a model.
func TestManyInFlight(t *testing.T) {
	const size = 4 << 20
	be := blocktest.NewMem(size)
	m := newMachine(t, be, blk.Config{NumQueues: 2, QueueSize: 64})
	m.start(t, blk.FeatureMQ, true)
	model := make([]byte, size)
	r := rand.New(rand.NewPCG(9, 9))
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	// Each queue owns half the disk, so the model needs no ordering
	// between queues; within a batch, requests touch distinct 16 KiB slots.
	for q := range 2 {
		seed := r.Uint64()
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- m.runQueue(q, seed, model[q*size/2:(q+1)*size/2], uint64(q*size/2/512))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(be.Bytes(), model) {
		t.Fatal("disk differs from the model")
	}
	s := m.dev.Stats()
	if s.MaxInFlight < 2 || s.Reads+s.Writes != 2*10*30 {
		t.Errorf("stats %+v", s)
	}
}

// runQueue runs batches of 30 requests on queue q (its own goroutine: the
// queuetest driver of q is used only here).
func (m *machine) runQueue(q int, seed uint64, model []byte, base uint64) error {
	r := rand.New(rand.NewPCG(seed, 1))
	d := m.queues[q]
	type req struct {
		write bool
		slot  int
		data  []byte
	}
	const slot = 16 << 10
	deadline := time.Now().Add(wait)
	for batch := range 10 {
		reqs := map[uint16]req{}
		for _, s := range r.Perm(len(model) / slot)[:30] {
			rq := req{write: r.IntN(2) == 0, slot: s}
			sector := base + uint64(s*slot/512)
			n := 512 * (1 + r.IntN(slot/512))
			var h uint16
			var err error
			if rq.write {
				rq.data = pattern(uint64(batch*1000+s), n)
				h, err = d.AddIndirect([][]byte{header(blk.TypeOut, sector), rq.data}, []uint32{1})
			} else {
				h, err = d.AddIndirect([][]byte{header(blk.TypeIn, sector)}, []uint32{uint32(n), 1})
				rq.data = model[s*slot : s*slot+n]
			}
			if err != nil {
				return err
			}
			reqs[h] = rq
		}
		if d.NeedsKick() {
			m.guest.Kick(q)
		}
		for len(reqs) > 0 {
			u, ok, err := d.GetUsed()
			if err != nil {
				return err
			}
			if !ok {
				// Interrupts of both queues share the router, so one
				// goroutine may take the other's: poll the ring too,
				// bounded by the deadline.
				if time.Now().After(deadline) {
					return fmt.Errorf("queue %d: %d requests never completed", q, len(reqs))
				}
				select {
				case <-m.router.Messages():
				case <-time.After(time.Millisecond):
				}
				continue
			}
			rq, found := reqs[u.ID]
			if !found {
				return fmt.Errorf("queue %d: unexpected used id %d", q, u.ID)
			}
			delete(reqs, u.ID)
			if rq.write {
				if u.Len != 1 || u.Data[0] != blk.StatusOK {
					return fmt.Errorf("write failed: %+v", u)
				}
				copy(model[rq.slot*slot:], rq.data)
			} else {
				if int(u.Len) != len(rq.data)+1 || u.Data[len(rq.data)] != blk.StatusOK || !bytes.Equal(u.Data[:len(rq.data)], rq.data) {
					return fmt.Errorf("queue %d: read of slot %d returned wrong data", q, rq.slot)
				}
			}
		}
	}
	return nil
}

// TestResetAndResize: a reset in the middle of traffic stops the device,
// which then serves a new activation; a resize is announced by a
// configuration interrupt and changes which sectors are valid.
func TestResetAndResize(t *testing.T) {
	be := blocktest.NewMem(1 << 20)
	m := newMachine(t, be, blk.Config{})
	m.start(t, 0, true)
	for i := range 20 {
		m.submit(t, 0, [][]byte{header(blk.TypeOut, uint64(i)), make([]byte, 512)}, []uint32{1}, false)
	}
	if err := m.guest.Reset(); err != nil {
		t.Fatal(err)
	}
	for len(m.router.Messages()) > 0 {
		<-m.router.Messages()
	}
	m.start(t, 0, true)
	if err := m.dev.Resize(2 << 20); err != nil {
		t.Fatal(err)
	}
	msg, err := m.router.Wait(wait)
	if err != nil || msg.Vector != 0 {
		t.Fatalf("config interrupt %+v %v", msg, err)
	}
	if c := m.guest.ReadDeviceConfig(0, 4); c != 4096 {
		t.Errorf("capacity after resize %d", c)
	}
	if st := m.write(t, 4000, pattern(6, 512)); st != blk.StatusOK {
		t.Errorf("write to grown area: %d", st)
	}
}

// TestResetUnderHostileLoad: a driver that republishes the same head as
// fast as it can (while it is still in flight) keeps every worker busy,
// or, on a raw file whose data is cached, the queue's goroutine serving
// the reads inline; a reset must still stop the device promptly.
func TestResetUnderHostileLoad(t *testing.T) {
	t.Run("workers", func(t *testing.T) { resetUnderHostileLoad(t, blocktest.NewMem(1<<20), false) })
	t.Run("inline", func(t *testing.T) {
		t.Setenv("VIO_BLK_INLINE", "")
		f, err := raw.Create(filepath.Join(t.TempDir(), "disk.raw"), 1<<20, raw.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(make([]byte, 1<<20), 0); err != nil { // in the page cache
			t.Fatal(err)
		}
		resetUnderHostileLoad(t, f, true)
	})
}

func resetUnderHostileLoad(t *testing.T, be block.Backend, inline bool) {
	m := newMachine(t, be, blk.Config{QueueSize: 64})
	m.start(t, 0, true)
	d := m.queues[0]
	a, _ := d.Alloc(4096 + 17)
	hdr := header(blk.TypeIn, 0)
	m.mem.WriteAt(hdr, int64(a))
	d.Reserve(0)
	d.Reserve(1)
	d.WriteDesc(0, queuetest.Desc{Addr: a, Len: 16, Flags: queuetest.FlagNext, Next: 1})
	d.WriteDesc(1, queuetest.Desc{Addr: a + 16, Len: 4097, Flags: queuetest.FlagWrite})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var avail uint16
		for {
			select {
			case <-stop:
				return
			default:
			}
			// Stay within the queue size of the used index, so the ring
			// stays valid and the device stays busy.
			if avail-d.UsedIdx() < 63 {
				d.Publish(0)
				avail++
				m.guest.Kick(0)
			} else {
				runtime.Gosched()
			}
		}
	}()
	deadline := time.Now().Add(wait)
	for m.dev.Stats().Reads < 1000 {
		if time.Now().After(deadline) {
			t.Fatal("device not serving")
		}
		runtime.Gosched()
	}
	reset := make(chan error, 1)
	go func() { reset <- m.guest.Reset() }()
	select {
	case err := <-reset:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("reset does not stop a busy device")
	}
	close(stop)
	<-done
	if st := m.tr.Stats(); st.BrokenQueues != 0 {
		t.Errorf("transport stats %+v", st)
	}
	if s := m.dev.Stats(); inline && s.InlineReads == 0 {
		t.Errorf("no read was served inline: %+v", s)
	}
}
