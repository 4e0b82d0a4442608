package ide_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/devices/ide"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/pci/pcitest"
)

// Register offsets and bits as a driver's headers spell them, written out
// here so the tests do not lean on the package's constants.
const (
	regData    = 0
	regErr     = 1
	regFeature = 1
	regNsect   = 2
	regLBAL    = 3
	regLBAM    = 4
	regLBAH    = 5
	regDevice  = 6
	regStatus  = 7
	regCommand = 7

	stBSY  = 0x80
	stDRDY = 0x40
	stDRQ  = 0x08
	stERR  = 0x01

	bmCmd    = 0
	bmStatus = 2
	bmPRD    = 4

	memSize  = 4 << 20
	prdTable = 0x1000
	dataBuf  = 0x100000
)

// rig is a native-mode controller over real image files, driven through
// its BARs as ata_piix drives it.
type rig struct {
	t    *testing.T
	mem  *memory.Memory
	c    *ide.Controller
	cmd  [2]bus.Device
	ctl  [2]bus.Device
	bm   bus.Device
	line *pcitest.Line
	path string // the disk image, when there is one
}

func newMemory(t testing.TB) *memory.Memory {
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: memSize}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	return mem
}

// image creates a raw file of size bytes filled with a pattern that
// names each 512-byte sector, and opens it.
func image(t testing.TB, size int64, ro bool) (block.Backend, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	b := make([]byte, size)
	for i := int64(0); i < size; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], uint64(i/512)<<32|uint64(i))
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := raw.Open(path, raw.Options{ReadOnly: ro})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, path
}

// pattern is what image wrote at byte offset off.
func pattern(off int64) uint64 { return uint64(off/512)<<32 | uint64(off) }

func newRig(t *testing.T, drives [4]ide.Drive) *rig {
	t.Helper()
	r := &rig{t: t, mem: newMemory(t), line: pcitest.NewLine()}
	c, err := ide.New(r.mem, ide.Config{Mode: ide.ModeNative, Drives: drives})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetINTxLine(r.line)
	r.c = c
	for i := 0; i < 2; i++ {
		b, _ := c.BAR(2 * i)
		r.cmd[i] = b.Device
		b, _ = c.BAR(2*i + 1)
		r.ctl[i] = b.Device
	}
	b, _ := c.BAR(4)
	r.bm = b.Device
	return r
}

// diskRig has a disk of size bytes at the primary master.
func diskRig(t *testing.T, size int64) *rig {
	be, path := image(t, size, false)
	r := newRig(t, [4]ide.Drive{{Kind: ide.Disk, Backend: be, Serial: "SN123", Model: "Test Disk"}})
	r.path = path
	return r
}

func (r *rig) in8(ch int, reg uint64) byte {
	var b [1]byte
	r.cmd[ch].Read(reg, b[:])
	return b[0]
}

func (r *rig) out8(ch int, reg uint64, v byte) { r.cmd[ch].Write(reg, []byte{v}) }

func (r *rig) altStatus(ch int) byte {
	var b [1]byte
	r.ctl[ch].Read(2, b[:])
	return b[0]
}

func (r *rig) devctl(ch int, v byte) { r.ctl[ch].Write(2, []byte{v}) }

// readData reads n bytes from the data port, 16 bits at a time.
func (r *rig) readData(ch, n int) []byte {
	out := make([]byte, 0, n)
	var w [2]byte
	for len(out) < n {
		r.cmd[ch].Read(regData, w[:])
		out = append(out, w[:]...)
	}
	return out[:n]
}

func (r *rig) writeData(ch int, p []byte) {
	for i := 0; i < len(p); i += 2 {
		r.cmd[ch].Write(regData, p[i:i+2])
	}
}

func (r *rig) bmOut8(ch int, reg uint64, v byte) { r.bm.Write(uint64(8*ch)+reg, []byte{v}) }

func (r *rig) bmIn8(ch int, reg uint64) byte {
	var b [1]byte
	r.bm.Read(uint64(8*ch)+reg, b[:])
	return b[0]
}

func (r *rig) bmOut32(ch int, reg uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	r.bm.Write(uint64(8*ch)+reg, b[:])
}

// lba28 loads an LBA28 address and count on drive dev.
func (r *rig) lba28(ch, dev int, lba uint32, n byte) {
	r.out8(ch, regDevice, 0xe0|byte(dev)<<4|byte(lba>>24)&0xf)
	r.out8(ch, regNsect, n)
	r.out8(ch, regLBAL, byte(lba))
	r.out8(ch, regLBAM, byte(lba>>8))
	r.out8(ch, regLBAH, byte(lba>>16))
}

// lba48 loads an LBA48 address and count, high bytes first.
func (r *rig) lba48(ch, dev int, lba uint64, n uint16) {
	r.out8(ch, regDevice, 0x40|byte(dev)<<4)
	r.out8(ch, regNsect, byte(n>>8))
	r.out8(ch, regLBAL, byte(lba>>24))
	r.out8(ch, regLBAM, byte(lba>>32))
	r.out8(ch, regLBAH, byte(lba>>40))
	r.out8(ch, regNsect, byte(n))
	r.out8(ch, regLBAL, byte(lba))
	r.out8(ch, regLBAM, byte(lba>>8))
	r.out8(ch, regLBAH, byte(lba>>16))
}

// level reports the INTx line.
func (r *rig) level() bool {
	high, _ := r.line.Level()
	return high
}

// waitIRQ waits for the line to be high (a DMA completion on the worker).
func (r *rig) waitIRQ() {
	r.t.Helper()
	deadline := time.After(10 * time.Second)
	for !r.level() {
		select {
		case <-r.line.Changes():
		case <-deadline:
			r.t.Fatalf("no interrupt; status %#x, bm status %#x", r.altStatus(0), r.bmIn8(0, bmStatus))
		}
	}
}

// prd writes a PRD table of (addr, len) entries, the last with EOT.
func (r *rig) prd(entries ...[2]uint32) {
	for i, e := range entries {
		var b [8]byte
		binary.LittleEndian.PutUint32(b[0:], e[0])
		binary.LittleEndian.PutUint32(b[4:], e[1]&0xffff)
		if i == len(entries)-1 {
			b[7] = 0x80
		}
		if _, err := r.mem.WriteAt(b[:], int64(prdTable+8*i)); err != nil {
			r.t.Fatal(err)
		}
	}
}

func (r *rig) readFile(off, n int64) []byte {
	b, err := os.ReadFile(r.path)
	if err != nil {
		r.t.Fatal(err)
	}
	return b[off : off+n]
}

func checkPattern(t *testing.T, what string, b []byte, off int64) {
	t.Helper()
	for i := 0; i < len(b); i += 8 {
		if got, want := binary.LittleEndian.Uint64(b[i:]), pattern(off+int64(i)); got != want {
			t.Fatalf("%s: byte %d: %#x, want %#x", what, i, got, want)
		}
	}
}

func newLine() *pcitest.Line { return pcitest.NewLine() }
