package e1000

import (
	"encoding/binary"
	"testing"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/nettest"
)

// fuzzMem is a small guest memory filled with fuzz data, so that ring
// and buffer addresses land both inside and outside it.
func fuzzMem(t testing.TB, fill []byte) *memory.Memory {
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 64 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	b, _ := mem.SliceForWrite(0, 64<<10)
	for i := 0; len(fill) > 0 && i < len(b); i += len(fill) {
		copy(b[i:], fill)
	}
	return mem
}

func fuzzDevice(t testing.TB, mem memory.DMA) (*Device, *nettest.Endpoint) {
	a, b := nettest.Pair(1 << 20)
	d, err := newDevice(a, mem, Config{MAC: []byte{2, 0, 0, 0, 0, 1}})
	if err != nil {
		t.Fatal(err)
	}
	return d, b
}

// FuzzTxRing runs transmit passes over a hostile ring: descriptors,
// buffers and ring registers all come from the input.
func FuzzTxRing(f *testing.F) {
	seed := make([]byte, 64)
	binary.LittleEndian.PutUint64(seed[0:], 0x100)
	binary.LittleEndian.PutUint32(seed[8:], 60|0x2b<<24)
	f.Add(uint32(0), uint32(128), uint16(0), uint16(4), uint32(1<<30), seed)
	ctx := make([]byte, 32)
	ctx[0], ctx[1], ctx[4], ctx[5] = 14, 24, 34, 50
	binary.LittleEndian.PutUint32(ctx[8:], 100|0x2f<<24)
	ctx[13] = 54
	binary.LittleEndian.PutUint16(ctx[14:], 64)
	binary.LittleEndian.PutUint64(ctx[16:], 0x200)
	binary.LittleEndian.PutUint32(ctx[24:], 200|1<<20|0x2d<<24)
	ctx[29] = 3
	f.Add(uint32(0), uint32(256), uint16(0), uint16(2), uint32(0), ctx)
	f.Add(uint32(0xfff0), uint32(0xfff80), uint16(7), uint16(3), uint32(0), []byte{0})
	f.Fuzz(func(t *testing.T, base, length uint32, head, tail uint16, ctrl uint32, fill []byte) {
		mem := fuzzMem(t, fill)
		d, peer := fuzzDevice(t, mem)
		defer peer.Close()
		d.mu.Lock()
		d.writeLocked(regCTRL, ctrl&^ctrlRST)
		d.writeLocked(regTDBAL, base)
		d.writeLocked(regTDLEN, length)
		d.writeLocked(regTDH, uint32(head))
		d.writeLocked(regTDT, uint32(tail))
		d.writeLocked(regTCTL, tctlEN)
		d.mu.Unlock()
		w := newTxWorker(d)
		for i := 0; i < 3 && w.pass(); i++ {
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if n := d.regs[regTDLEN/4] / descSize; n != 0 && uint32(head) < n && uint32(tail) < n && d.regs[regTDH/4] != uint32(tail) {
			t.Fatalf("TDH %d did not reach TDT %d on a ring of %d", d.regs[regTDH/4], tail, n)
		}
	})
}

// FuzzRxRing delivers one frame into a hostile receive ring.
func FuzzRxRing(f *testing.F) {
	f.Add(uint32(0), uint32(128), uint16(0), uint16(5), uint32(rctlEN|rctlUPE), []byte{0, 0, 1, 0}, make([]byte, 60))
	f.Add(uint32(0xff00), uint32(1024), uint16(60), uint16(2), uint32(rctlEN|rctlBAM|3<<16|rctlLPE), []byte{0xff}, make([]byte, 3000))
	f.Fuzz(func(t *testing.T, base, length uint32, head, tail uint16, rctl uint32, fill, frame []byte) {
		mem := fuzzMem(t, fill)
		d, peer := fuzzDevice(t, mem)
		defer peer.Close()
		close(d.stop) // every wait returns at once
		d.mu.Lock()
		d.writeLocked(regRDBAL, base)
		d.writeLocked(regRDLEN, length)
		d.writeLocked(regRDH, uint32(head))
		d.writeLocked(regRDT, uint32(tail))
		d.writeLocked(regRCTL, rctl)
		d.writeLocked(regCTRL, ctrlVME)
		d.mu.Unlock()
		pkt := append(make([]byte, netdev.HeaderSize), frame...)
		if len(frame) > 0 {
			pkt[0] = frame[0] & 3 // NEEDS_CSUM, DATA_VALID
			pkt[6], pkt[8] = frame[len(frame)-1], frame[len(frame)/2]
		}
		out := make([]byte, 0, maxLongFrame)
		d.receive(pkt, &out)
		d.mu.Lock()
		defer d.mu.Unlock()
		if n := d.regs[regRDLEN/4] / descSize; n != 0 && d.regs[regRDH/4] >= n && uint32(head) < n {
			t.Fatalf("RDH %d outside a ring of %d", d.regs[regRDH/4], n)
		}
	})
}
