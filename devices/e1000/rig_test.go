package e1000_test

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/devices/e1000"
	"github.com/viovmm/vio/devices/e1000/e1000test"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/pci/pcitest"
)

// Register offsets, written out here as the driver's header has them,
// so the tests do not lean on the package's own constants.
const (
	CTRL   = 0x0000
	STATUS = 0x0008
	EECD   = 0x0010
	EERD   = 0x0014
	MDIC   = 0x0020
	ICR    = 0x00c0
	ITR    = 0x00c4
	ICS    = 0x00c8
	IMS    = 0x00d0
	IMC    = 0x00d8
	RCTL   = 0x0100
	TCTL   = 0x0400
	RDBAL  = 0x2800
	RDBAH  = 0x2804
	RDLEN  = 0x2808
	RDH    = 0x2810
	RDT    = 0x2818
	RDTR   = 0x2820
	RADV   = 0x282c
	TDBAL  = 0x3800
	TDBAH  = 0x3804
	TDLEN  = 0x3808
	TDH    = 0x3810
	TDT    = 0x3818
	TIDV   = 0x3820
	TADV   = 0x382c
	RXCSUM = 0x5000
	MTA    = 0x5200
	RAL0   = 0x5400
	RAH0   = 0x5404
	GPRC   = 0x4074
	GPTC   = 0x4080
	GORCL  = 0x4088
	TPR    = 0x40d0
	TSCTC  = 0x40f8
	VET    = 0x0038

	icrTXDW   = 1 << 0
	icrTXQE   = 1 << 1
	icrLSC    = 1 << 2
	icrRXDMT0 = 1 << 4
	icrRXT0   = 1 << 7

	rctlEN  = 1 << 1
	rctlUPE = 1 << 3
	rctlMPE = 1 << 4
	rctlBAM = 1 << 15
	tctlEN  = 1 << 1
	tctlPSP = 1 << 3

	// Memory layout of the rig.
	memSize  = 4 << 20
	txRing   = 0x10000
	rxRing   = 0x20000
	txBufs   = 0x100000
	rxBufs   = 0x200000
	ringSize = 16
)

var testMAC = []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

// rig is a device on an in-memory link, driven register by register as
// Linux's e1000 driver drives it.
type rig struct {
	t     *testing.T
	mem   *memory.Memory
	dev   *e1000.Device
	mmio  bus.Device
	io    bus.Device
	line  *pcitest.Line
	peer  *nettest.Endpoint
	clock *e1000test.Clock
	seen  uint32 // interrupt causes read from ICR by waitRxDesc
}

func newRig(t *testing.T, clock bool) *rig {
	t.Helper()
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: memSize}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	a, b := nettest.Pair(64)
	r := &rig{t: t, mem: mem, line: pcitest.NewLine(), peer: b}
	cfg := e1000.Config{MAC: testMAC}
	if clock {
		r.clock = e1000test.NewClock()
		cfg.Clock = r.clock
	}
	r.dev, err = e1000.New(a, mem, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.dev.Close(); a.Close(); b.Close() })
	r.dev.SetINTxLine(r.line)
	bar0, _ := r.dev.BAR(0)
	bar1, _ := r.dev.BAR(1)
	r.mmio, r.io = bar0.Device, bar1.Device
	return r
}

func (r *rig) rd(off uint64) uint32 {
	var b [4]byte
	r.mmio.Read(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (r *rig) wr(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	r.mmio.Write(off, b[:])
}

func (r *rig) ioWrite(port uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	r.io.Write(port, b[:])
}

func (r *rig) ioRead(port uint64) uint32 {
	var b [4]byte
	r.io.Read(port, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (r *rig) put64(addr uint64, v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	if _, err := r.mem.WriteAt(b[:], int64(addr)); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) bytes(addr uint64, n int) []byte {
	b := make([]byte, n)
	if _, err := r.mem.ReadAt(b, int64(addr)); err != nil {
		r.t.Fatal(err)
	}
	return b
}

// up does what e1000_open does after reset: rings, receive buffers,
// receive/transmit enable and the interrupt mask.
func (r *rig) up(rctl uint32) {
	r.wr(TDBAL, txRing)
	r.wr(TDBAH, 0)
	r.wr(TDLEN, ringSize*16)
	r.wr(TDH, 0)
	r.wr(TDT, 0)
	r.wr(TCTL, tctlEN|tctlPSP)
	for i := range uint64(ringSize) {
		r.put64(rxRing+16*i, rxBufs+2048*i)
		r.put64(rxRing+16*i+8, 0)
	}
	r.wr(RDBAL, rxRing)
	r.wr(RDBAH, 0)
	r.wr(RDLEN, ringSize*16)
	r.wr(RDH, 0)
	r.wr(RDT, 0)
	r.wr(RCTL, rctl)
	r.wr(IMS, icrRXT0|icrTXDW|icrLSC|icrRXDMT0)
}

// txLegacy places a legacy descriptor at ring index i.
func (r *rig) txLegacy(i int, buf uint64, n int, cmd uint8) {
	r.put64(txRing+16*uint64(i), buf)
	r.put64(txRing+16*uint64(i)+8, uint64(n)|uint64(cmd)<<24)
}

// recv returns the next frame the device sent, without its header.
func (r *rig) recv() ([]byte, netdev.Header) {
	r.t.Helper()
	frame, h, err := r.tryRecv(5 * time.Second)
	if err != nil {
		r.t.Fatalf("no frame from the device: %v", err)
	}
	return frame, h
}

func (r *rig) tryRecv(d time.Duration) ([]byte, netdev.Header, error) {
	r.peer.SetReadDeadline(time.Now().Add(d)) // bounds a hang, not a synchronization
	buf := [][]byte{make([]byte, netdev.MaxPacketLen)}
	sizes := []int{0}
	if _, err := r.peer.ReadFrames(buf, sizes); err != nil {
		return nil, netdev.Header{}, err
	}
	p := buf[0][:sizes[0]]
	return p[netdev.HeaderSize:], netdev.DecodeHeader(p), nil
}

// send delivers frame from the network to the device.
func (r *rig) send(frame []byte) {
	r.t.Helper()
	var hdr [netdev.HeaderSize]byte
	if _, err := r.peer.WriteFrames([][][]byte{{hdr[:], frame}}); err != nil {
		r.t.Fatal(err)
	}
}

// waitLine waits until the INTx line has the given level.
func (r *rig) waitLine(high bool) {
	r.t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		if l, _ := r.line.Level(); l == high {
			return
		}
		select {
		case <-r.line.Changes():
		case <-timeout:
			r.t.Fatalf("INTx line never went %v", high)
		}
	}
}

// waitRxDesc waits, as the driver's interrupt handler does, until
// receive descriptor i is done: on each interrupt it reads ICR (which
// lowers the line) and collects the causes in r.seen.
func (r *rig) waitRxDesc(i int) (length uint16, status, errs uint8, special uint16) {
	r.t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		if l, _ := r.line.Level(); l {
			r.seen |= r.rd(ICR)
		}
		wb := r.bytes(rxRing+16*uint64(i)+8, 8)
		if wb[4]&1 != 0 {
			return binary.LittleEndian.Uint16(wb), wb[4], wb[5], binary.LittleEndian.Uint16(wb[6:])
		}
		select {
		case <-r.line.Changes():
		case <-timeout:
			r.t.Fatalf("receive descriptor %d never completed", i)
		}
	}
}

// frame builds an Ethernet frame.
func frame(dst, src []byte, typ uint16, payload []byte) []byte {
	f := append(append(append([]byte{}, dst...), src...), byte(typ>>8), byte(typ))
	return append(f, payload...)
}
