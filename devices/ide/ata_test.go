package ide_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/devices/ide"
	"github.com/viovmm/vio/memory"
)

const diskSize = 8 << 20

func identifyString(id []byte, from, to int) string {
	var b []byte
	for w := from; w < to; w++ {
		b = append(b, id[2*w+1], id[2*w])
	}
	return strings.TrimSpace(string(b))
}

func TestIdentifyDevice(t *testing.T) {
	r := diskRig(t, diskSize)
	if s := r.in8(0, regStatus); s != stDRDY|0x10 {
		t.Fatalf("status after power-on %#x", s)
	}
	if m, h := r.in8(0, regLBAM), r.in8(0, regLBAH); m != 0 || h != 0 {
		t.Fatalf("ATA signature %02x%02x", h, m)
	}
	r.out8(0, regDevice, 0xa0)
	r.out8(0, regCommand, 0xec)
	if !r.level() {
		t.Fatal("IDENTIFY raised no interrupt")
	}
	if s := r.altStatus(0); s&stDRQ == 0 || s&stBSY != 0 {
		t.Fatalf("status %#x, want DRQ", s)
	}
	if !r.level() {
		t.Fatal("reading the alternate status acknowledged the interrupt")
	}
	if s := r.in8(0, regStatus); s&stDRQ == 0 {
		t.Fatalf("status %#x", s)
	}
	if r.level() {
		t.Fatal("reading status did not acknowledge the interrupt")
	}
	id := r.readData(0, 512)
	if s := r.in8(0, regStatus); s != stDRDY|0x10 {
		t.Fatalf("status after the data %#x", s)
	}
	w := func(i int) uint16 { return binary.LittleEndian.Uint16(id[2*i:]) }
	var sum byte
	for _, b := range id {
		sum += b
	}
	if id[510] != 0xa5 || sum != 0 {
		t.Errorf("integrity word %#x, sum %#x", w(255), sum)
	}
	if w(0)&0x8000 != 0 {
		t.Errorf("word 0 %#x says not ATA", w(0))
	}
	if got := identifyString(id, 27, 47); got != "Test Disk" {
		t.Errorf("model %q", got)
	}
	if got := identifyString(id, 10, 20); got != "SN123" {
		t.Errorf("serial %q", got)
	}
	sectors := uint64(diskSize / 512)
	if got := uint64(w(60)) | uint64(w(61))<<16; got != sectors {
		t.Errorf("LBA28 sectors %d, want %d", got, sectors)
	}
	if got := uint64(w(100)) | uint64(w(101))<<16 | uint64(w(102))<<32 | uint64(w(103))<<48; got != sectors {
		t.Errorf("LBA48 sectors %d", got)
	}
	if w(83)&(1<<10) == 0 || w(83)&(1<<13) == 0 || w(83)&(1<<12) == 0 || w(83)>>14 != 1 {
		t.Errorf("word 83 %#x lacks LBA48 / FLUSH CACHE (EXT)", w(83))
	}
	if w(82)&(1<<5) == 0 || w(85)&(1<<5) == 0 {
		t.Errorf("write cache not supported and enabled: %#x %#x", w(82), w(85))
	}
	if w(49)&(3<<8) != 3<<8 || w(88)&0x3f != 0x3f || w(63)&7 != 7 {
		t.Errorf("DMA modes: 49=%#x 63=%#x 88=%#x", w(49), w(63), w(88))
	}
	// SET FEATURES: UDMA 2 and write cache off show in the next IDENTIFY.
	r.out8(0, regFeature, 0x03)
	r.out8(0, regNsect, 0x42)
	r.out8(0, regCommand, 0xef)
	if s := r.in8(0, regStatus); s&stERR != 0 {
		t.Fatalf("SET FEATURES xfer mode: status %#x", s)
	}
	r.out8(0, regFeature, 0x82)
	r.out8(0, regCommand, 0xef)
	r.in8(0, regStatus)
	r.out8(0, regFeature, 0x99)
	r.out8(0, regCommand, 0xef)
	if s, e := r.in8(0, regStatus), r.in8(0, regErr); s&stERR == 0 || e != 0x04 {
		t.Fatalf("unknown SET FEATURES: status %#x error %#x, want ABRT", s, e)
	}
	r.out8(0, regCommand, 0xec)
	r.in8(0, regStatus)
	id = r.readData(0, 512)
	if w(88)>>8 != 1<<2 {
		t.Errorf("UDMA selected %#x, want mode 2", w(88)>>8)
	}
	if w(85)&(1<<5) != 0 {
		t.Error("write cache still enabled")
	}
}

func TestPIORead(t *testing.T) {
	r := diskRig(t, diskSize)
	r.lba28(0, 0, 100, 3)
	r.out8(0, regCommand, 0x20)
	for i := int64(0); i < 3; i++ {
		if !r.level() {
			t.Fatalf("block %d: no interrupt", i)
		}
		if s := r.in8(0, regStatus); s&(stDRQ|stERR) != stDRQ {
			t.Fatalf("block %d: status %#x", i, s)
		}
		checkPattern(t, "READ SECTORS", r.readData(0, 512), (100+i)*512)
	}
	if r.level() || r.in8(0, regStatus) != stDRDY|0x10 {
		t.Fatal("the last block should end the command with no interrupt")
	}

	// READ MULTIPLE EXT, 8 sectors per block, 20 sectors: blocks of 8, 8, 4.
	r.out8(0, regNsect, 8)
	r.out8(0, regCommand, 0xc6)
	r.in8(0, regStatus)
	lba := uint64(diskSize/512 - 20)
	r.lba48(0, 0, lba, 20)
	r.out8(0, regCommand, 0x29)
	for _, n := range []int64{8, 8, 4} {
		if !r.level() {
			t.Fatal("no interrupt")
		}
		r.in8(0, regStatus)
		checkPattern(t, "READ MULTIPLE EXT", r.readData(0, int(n*512)), int64(lba)*512)
		lba += uint64(n)
	}
	if s := r.in8(0, regStatus); s != stDRDY|0x10 {
		t.Fatalf("status %#x", s)
	}

	// Past the end: IDNF.
	r.lba48(0, 0, diskSize/512-1, 2)
	r.out8(0, regCommand, 0x24)
	if s, e := r.in8(0, regStatus), r.in8(0, regErr); s&stERR == 0 || e != 0x10 {
		t.Fatalf("read past the end: status %#x error %#x, want IDNF", s, e)
	}
}

func TestPIOWrite(t *testing.T) {
	r := diskRig(t, diskSize)
	data := bytes.Repeat([]byte("vio-ide!"), 2*512/8)
	r.lba28(0, 0, 7, 2)
	r.out8(0, regCommand, 0x30)
	if r.level() {
		t.Fatal("the first block of a PIO write must not interrupt")
	}
	if s := r.altStatus(0); s&stDRQ == 0 {
		t.Fatalf("status %#x, want DRQ", s)
	}
	r.writeData(0, data[:512])
	if !r.level() {
		t.Fatal("no interrupt for the second block")
	}
	r.in8(0, regStatus)
	r.writeData(0, data[512:])
	if !r.level() {
		t.Fatal("no completion interrupt")
	}
	if s := r.in8(0, regStatus); s != stDRDY|0x10 {
		t.Fatalf("status %#x", s)
	}
	if got := r.readFile(7*512, 1024); !bytes.Equal(got, data) {
		t.Fatal("the image does not hold what was written")
	}
	checkPattern(t, "neighbour", r.readFile(6*512, 512), 6*512)
	checkPattern(t, "neighbour", r.readFile(9*512, 512), 9*512)
}

func TestDMA(t *testing.T) {
	r := diskRig(t, diskSize)
	// 64 sectors through three PRD entries of uneven sizes.
	r.prd([2]uint32{dataBuf, 4096}, [2]uint32{dataBuf + 0x10000, 0x2000}, [2]uint32{dataBuf + 0x20000, 0x5000})
	const lba = 2000
	r.bmOut32(0, bmPRD, prdTable)
	r.bmOut8(0, bmCmd, 0x08) // to memory
	r.lba48(0, 0, lba, 64)
	r.out8(0, regCommand, 0x25)
	if s := r.altStatus(0); s&stBSY == 0 {
		t.Fatalf("status %#x before the engine starts, want BSY", s)
	}
	r.bmOut8(0, bmCmd, 0x09)
	r.waitIRQ()
	if bs := r.bmIn8(0, bmStatus); bs&0x07 != 0x04 {
		t.Fatalf("bus-master status %#x, want INTR and not active", bs)
	}
	r.bmOut8(0, bmCmd, 0x00)
	r.bmOut8(0, bmStatus, 0x04)
	if bs := r.bmIn8(0, bmStatus); bs&0x04 != 0 {
		t.Fatal("INTR is write-1-to-clear")
	}
	if s := r.in8(0, regStatus); s != stDRDY|0x10 {
		t.Fatalf("status %#x", s)
	}
	get := func(addr, n int64) []byte {
		b := make([]byte, n)
		r.mem.ReadAt(b, addr)
		return b
	}
	checkPattern(t, "PRD 0", get(dataBuf, 4096), lba*512)
	checkPattern(t, "PRD 1", get(dataBuf+0x10000, 0x2000), lba*512+4096)
	checkPattern(t, "PRD 2", get(dataBuf+0x20000, 0x5000), lba*512+4096+0x2000)

	// WRITE DMA (LBA28) of the same 32 KiB to sector 10.
	r.bmOut8(0, bmCmd, 0x00)
	r.lba28(0, 0, 10, 64)
	r.out8(0, regCommand, 0xca)
	r.bmOut8(0, bmCmd, 0x01)
	r.waitIRQ()
	r.bmOut8(0, bmCmd, 0)
	if s := r.in8(0, regStatus); s != stDRDY|0x10 {
		t.Fatalf("WRITE DMA status %#x", s)
	}
	checkPattern(t, "WRITE DMA", r.readFile(10*512, 64*512), lba*512)
	st := r.c.Stats()
	if st.ReadBytes != 64*512 || st.WriteBytes != 64*512 || st.Interrupts < 2 {
		t.Errorf("stats %+v", st)
	}

	// A PRD table larger than the transfer leaves the engine active.
	r.prd([2]uint32{dataBuf, 0}) // 64 KiB
	r.lba28(0, 0, 0, 1)
	r.out8(0, regCommand, 0xc8)
	r.bmOut8(0, bmCmd, 0x09)
	r.waitIRQ()
	if bs := r.bmIn8(0, bmStatus); bs&0x05 != 0x05 {
		t.Fatalf("bus-master status %#x, want active and INTR", bs)
	}
	r.bmOut8(0, bmCmd, 0)
	r.in8(0, regStatus)
}

// TestDMAHostile: PRD tables that point outside memory, end too early or
// never end get an error completion, never a hang.
func TestDMAHostile(t *testing.T) {
	r := diskRig(t, diskSize)
	run := func(name string, cmd byte, wantBMErr bool) {
		t.Helper()
		r.bmOut32(0, bmPRD, prdTable)
		r.lba28(0, 0, 0, 16)
		r.out8(0, regCommand, cmd)
		r.bmOut8(0, bmCmd, 0x09)
		r.waitIRQ()
		bs := r.bmIn8(0, bmStatus)
		s, e := r.in8(0, regStatus), r.in8(0, regErr)
		if s&stERR == 0 || e&0x04 == 0 {
			t.Errorf("%s: status %#x error %#x, want ABRT", name, s, e)
		}
		if got := bs&0x02 != 0; got != wantBMErr {
			t.Errorf("%s: bus-master status %#x", name, bs)
		}
		r.bmOut8(0, bmCmd, 0)
		r.bmOut8(0, bmStatus, 0x06)
	}
	r.prd([2]uint32{memSize - 512, 4096}) // runs off the end of RAM
	run("buffer outside memory", 0xc8, true)
	run("write from outside memory", 0xca, true)
	r.prd([2]uint32{dataBuf, 512}) // 512 bytes for 8 KiB
	run("short table", 0xc8, false)
	r.bmOut32(0, bmPRD, memSize-4) // the table itself outside memory
	r.lba28(0, 0, 0, 1)
	r.out8(0, regCommand, 0xc8)
	r.bmOut8(0, bmCmd, 0x09)
	r.waitIRQ()
	if bs := r.bmIn8(0, bmStatus); bs&0x02 == 0 {
		t.Errorf("PRD table outside memory: bus-master status %#x", bs)
	}
	r.bmOut8(0, bmCmd, 0)
	r.in8(0, regStatus)
	// A table of 2-byte entries with no end: 8192 entries at most are
	// walked, 16 KiB, so a 65536-sector command ends short.
	var e [8]byte
	binary.LittleEndian.PutUint32(e[:], dataBuf)
	binary.LittleEndian.PutUint32(e[4:], 2)
	for i := 0; i < 16384; i++ {
		r.mem.WriteAt(e[:], int64(0x200000+8*i))
	}
	r.bmOut32(0, bmPRD, 0x200000)
	r.lba48(0, 0, 0, diskSize/512) // the whole disk
	r.out8(0, regCommand, 0x25)
	r.bmOut8(0, bmCmd, 0x09)
	r.waitIRQ()
	if s, e := r.in8(0, regStatus), r.in8(0, regErr); s&stERR == 0 || e&0x04 == 0 {
		t.Errorf("endless table: status %#x error %#x", s, e)
	}
}

// flushCounter is an interposer counting flushes that reach the image.
type flushCounter struct {
	block.Backend
	n atomic.Int64
}

func (f *flushCounter) Flush() error { f.n.Add(1); return f.Backend.Flush() }

func TestFlushAndWriteCache(t *testing.T) {
	be, path := image(t, diskSize, false)
	fc := &flushCounter{Backend: be}
	r := newRig(t, [4]ide.Drive{{Kind: ide.Disk, Backend: fc}})
	r.path = path
	r.out8(0, regDevice, 0xa0)
	r.out8(0, regCommand, 0xea) // FLUSH CACHE EXT
	r.waitIRQ()
	if s := r.in8(0, regStatus); s != stDRDY|0x10 {
		t.Fatalf("status %#x", s)
	}
	if fc.n.Load() != 1 {
		t.Fatalf("%d flushes reached the back-end, want 1", fc.n.Load())
	}
	r.out8(0, regCommand, 0xe7) // FLUSH CACHE
	r.waitIRQ()
	r.in8(0, regStatus)
	if fc.n.Load() != 2 {
		t.Fatalf("%d flushes", fc.n.Load())
	}
	// With the write cache off, every write is flushed.
	r.out8(0, regFeature, 0x82)
	r.out8(0, regCommand, 0xef)
	r.in8(0, regStatus)
	r.lba28(0, 0, 0, 1)
	r.out8(0, regCommand, 0x30)
	r.writeData(0, make([]byte, 512))
	r.in8(0, regStatus)
	if fc.n.Load() != 3 {
		t.Fatalf("write-through write: %d flushes, want 3", fc.n.Load())
	}
}

func TestReadOnlyDisk(t *testing.T) {
	be, _ := image(t, diskSize, true)
	r := newRig(t, [4]ide.Drive{{Kind: ide.Disk, Backend: be}})
	for _, cmd := range []byte{0x30, 0xca, 0x35, 0xc5} {
		r.lba28(0, 0, 0, 1)
		r.out8(0, regCommand, cmd)
		if s, e := r.in8(0, regStatus), r.in8(0, regErr); s&stERR == 0 || e != 0x04 || s&stDRQ != 0 {
			t.Errorf("command %#x on a read-only disk: status %#x error %#x", cmd, s, e)
		}
	}
}

func TestResetAndSelection(t *testing.T) {
	r := diskRig(t, diskSize)
	// The absent slave reads status 0 (how ata_piix finds it missing).
	r.out8(0, regDevice, 0xb0)
	if s := r.in8(0, regStatus); s != 0 {
		t.Fatalf("absent slave status %#x", s)
	}
	r.out8(0, regDevice, 0xa0)
	// An empty channel floats to 0.
	if s := r.in8(1, regStatus); s != 0 {
		t.Fatalf("empty channel status %#x", s)
	}
	// A DMA command waiting for the engine, then SRST.
	r.lba28(0, 0, 0, 1)
	r.out8(0, regCommand, 0xc8)
	r.devctl(0, 0x04)
	if s := r.altStatus(0); s&stBSY == 0 {
		t.Fatalf("status %#x during SRST", s)
	}
	r.out8(0, regCommand, 0xec) // ignored: busy
	r.devctl(0, 0x00)
	if s := r.in8(0, regStatus); s != stDRDY|0x10 {
		t.Fatalf("status after SRST %#x", s)
	}
	if n, l, e := r.in8(0, regNsect), r.in8(0, regLBAL), r.in8(0, regErr); n != 1 || l != 1 || e != 1 {
		t.Fatalf("signature %d %d error %#x", n, l, e)
	}
	// The abandoned DMA does not complete once the engine starts.
	r.prd([2]uint32{dataBuf, 512})
	r.bmOut32(0, bmPRD, prdTable)
	r.bmOut8(0, bmCmd, 0x09)
	r.bmOut8(0, bmCmd, 0x00)
	if r.level() {
		t.Fatal("a reset command completed")
	}
	// nIEN masks the line.
	r.devctl(0, 0x02)
	r.out8(0, regCommand, 0xe5)
	if r.level() {
		t.Fatal("nIEN set but the line rose")
	}
	r.devctl(0, 0x00)
	if !r.level() {
		t.Fatal("clearing nIEN should show the pending interrupt")
	}
	if n := r.in8(0, regNsect); n != 0xff {
		t.Fatalf("CHECK POWER MODE count %#x", n)
	}
	r.in8(0, regStatus)
	// HOB reads back the previous register values.
	r.lba48(0, 0, 0x123456789abc, 0x0102)
	r.devctl(0, 0x80)
	if l, m, h, n := r.in8(0, regLBAL), r.in8(0, regLBAM), r.in8(0, regLBAH), r.in8(0, regNsect); l != 0x56 || m != 0x34 || h != 0x12 || n != 1 {
		t.Fatalf("HOB registers %#x %#x %#x %#x", l, m, h, n)
	}
	r.devctl(0, 0)
	if l := r.in8(0, regLBAL); l != 0xbc {
		t.Fatalf("LBA low %#x", l)
	}
}

func TestConfigErrors(t *testing.T) {
	mem := newMemory(t)
	if _, err := ide.New(mem, ide.Config{Drives: [4]ide.Drive{{Kind: ide.Disk}}}); !errors.Is(err, ide.ErrConfig) {
		t.Errorf("disk without back-end: %v", err)
	}
	if _, err := ide.New(nil, ide.Config{}); !errors.Is(err, ide.ErrConfig) {
		t.Errorf("no memory: %v", err)
	}
	be, _ := image(t, 4096, false)
	if _, err := ide.New(mem, ide.Config{Drives: [4]ide.Drive{{Kind: ide.Disk, Backend: be, Serial: strings.Repeat("x", 21)}}}); !errors.Is(err, ide.ErrConfig) {
		t.Errorf("long serial: %v", err)
	}
	var _ memory.DMA = mem
}

func TestLegacyMode(t *testing.T) {
	mem := newMemory(t)
	be, _ := image(t, diskSize, false)
	c, err := ide.New(mem, ide.Config{Mode: ide.ModeLegacy, Drives: [4]ide.Drive{2: {Kind: ide.Disk, Backend: be}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := make([]byte, 4)
	c.ReadConfig(8, cfg)
	if cfg[1] != 0x80 || cfg[2] != 0x01 || cfg[3] != 0x01 {
		t.Fatalf("class bytes % x", cfg)
	}
	if b, _ := c.BAR(0); b.Kind != 0 {
		t.Fatal("legacy mode decodes BAR0")
	}
	l0, l1 := newLine(), newLine()
	c.SetLegacyLines(l0, l1)
	cmd, ctl := c.CommandBlock(1), c.ControlBlock(1)
	cmd.Write(6, []byte{0xa0})
	cmd.Write(7, []byte{0xe5})
	if high, _ := l1.Level(); !high {
		t.Fatal("IRQ 15 did not rise")
	}
	if high, _ := l0.Level(); high {
		t.Fatal("IRQ 14 rose for the secondary channel")
	}
	var s [1]byte
	ctl.Read(0, s[:])
	if s[0] != 0x50 {
		t.Fatalf("alternate status %#x", s[0])
	}
	cmd.Read(7, s[:])
	if high, _ := l1.Level(); high {
		t.Fatal("status read did not lower IRQ 15")
	}
}
