package blk_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// heldBackend is a back-end whose reads and writes wait while it is held,
// so that requests are in flight when the script resets the device.
type heldBackend struct {
	block.Backend
	mu      sync.Mutex
	gate    chan struct{} // nil: open
	active  int           // reads, writes and flushes under way
	entered chan struct{} // signalled when one starts
}

func (b *heldBackend) enter() {
	b.mu.Lock()
	b.active++
	g := b.gate
	b.mu.Unlock()
	select {
	case b.entered <- struct{}{}:
	default:
	}
	if g != nil {
		<-g
	}
}

func (b *heldBackend) leave() {
	b.mu.Lock()
	b.active--
	b.mu.Unlock()
}

func (b *heldBackend) busy() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.active
}

func (b *heldBackend) hold() {
	b.mu.Lock()
	if b.gate == nil {
		b.gate = make(chan struct{})
	}
	b.mu.Unlock()
}

func (b *heldBackend) held() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.gate != nil
}

func (b *heldBackend) release() {
	b.mu.Lock()
	if b.gate != nil {
		close(b.gate)
		b.gate = nil
	}
	b.mu.Unlock()
}

func (b *heldBackend) ReadAt(p []byte, off int64) (int, error) {
	b.enter()
	defer b.leave()
	return b.Backend.ReadAt(p, off)
}

// TryReadvAt serves a read at once unless the back-end is held, when the
// read would wait: the script exercises inline reads, and a held read
// still goes to a worker, where a reset finds it waiting.
func (b *heldBackend) TryReadvAt(bufs [][]byte, off int64) (int, error) {
	b.mu.Lock()
	if b.gate != nil {
		b.mu.Unlock()
		return 0, block.ErrWouldBlock
	}
	b.active++
	b.mu.Unlock()
	defer b.leave()
	return block.ReadvAt(b.Backend, bufs, off)
}

func (b *heldBackend) WriteAt(p []byte, off int64) (int, error) {
	b.enter()
	defer b.leave()
	return b.Backend.WriteAt(p, off)
}

func (b *heldBackend) Flush() error {
	b.enter()
	defer b.leave()
	return b.Backend.Flush()
}

// Script operations of FuzzTransportScript, three bytes each: kind, a, b.
const (
	opStatus      = iota // write device_status a (0: reset)
	opFeatures           // driver_feature_select a&3, driver_feature: offered bits masked by b, or all ones
	opQueueSel           // queue_select a (queues beyond the device's included)
	opQueueSize          // queue_size 1<<(a%7), or b if a&0x80
	opQueueRings         // lay out the selected queue's rings (a&1: misaligned, a&2: outside RAM)
	opQueueEnable        // queue_enable a&1 (0 is ignored by the transport)
	opQueueVector        // queue_msix_vector a (a&0x80: NO_VECTOR)
	opRequest            // a request on queue a%2: read, write or flush of sector b
	opKick               // notify queue a%3
	opHold               // hold (a&1) or release the back-end
	opPoll               // read every used entry published
	opWait               // kick and wait (on interrupts) until every request completed, when they all can
	opAwait              // with the back-end held: kick and wait until a request is on it
	opDevFeatures        // device_feature_select a&3, then read device_feature and driver_feature back
	numOps
)

const (
	tfQueues   = 2
	tfQueueMax = 16
	tfRingBase = 0x100000
	tfRingSpan = 0x20000
	tfDataSize = 0x10000
	tfSnapEnd  = tfRingBase + tfQueues*tfRingSpan
)

// tfMem is FuzzTransportScript's guest RAM, reused across inputs (a fuzz
// worker runs one at a time, and a first touch of a page costs more here
// than a short script): the rings are laid out afresh by queuetest.New,
// which clears them, and the device of the previous input was reset.
var tfMem *memory.Memory

// FuzzTransportScript drives virtio-blk behind the virtio-pci transport
// the way a driver does, with a script of register writes (device status
// including resets and DRIVER_OK, feature selects and reads, queue selection, size,
// rings, enable and vectors) interleaved with requests, notifications and
// a back-end that holds requests in flight across resets. It must not
// panic or hang, and:
//   - device_feature reads what the device offers, driver_feature what the
//     driver wrote until FEATURES_OK froze it;
//   - device_status reads back exactly what the spec's state machine says
//     (FEATURES_OK sticks only for offered features with VERSION_1,
//     DRIVER_OK only after FEATURES_OK, bits are only added), apart from
//     DEVICE_NEEDS_RESET, which appears only after an activation attempt;
//   - while a reset is in flight the status reads the old value or 0, and
//     once it is complete 0;
//   - a reset leaves the device quiescent: from its completion until the
//     next DRIVER_OK nothing changes in the rings or buffers, even with
//     requests that were waiting on the back-end when the reset began;
//   - every used entry names a request in flight on that activation's
//     rings, with the length and status a well-formed request gets, and
//     on a running device whose driver can take interrupts every request
//     completes.
func FuzzTransportScript(f *testing.F) {
	bringUp := []byte{
		opStatus, 1, 0, opStatus, 2, 0,
		opFeatures, 0, 0x7f, opFeatures, 1, 0x7f, opStatus, 8, 0,
		opQueueSel, 0, 0, opQueueRings, 0, 0, opQueueVector, 1, 0, opQueueEnable, 1, 0,
		opQueueSel, 1, 0, opQueueRings, 0, 0, opQueueVector, 2, 0, opQueueEnable, 1, 0,
		opStatus, 4, 0,
	}
	io := []byte{opRequest, 0, 3, opRequest, 1, 0x43, opRequest, 0, 0x83, opKick, 0, 0, opKick, 1, 0, opPoll, 0, 0, opWait, 0, 0}
	// Bring-up, I/O, then a reset with requests held on the back-end,
	// and a second bring-up on the same rings.
	f.Add(append(append(append(append(append([]byte{}, bringUp...), io...), opHold, 1, 0), append(io, opAwait, 0, 0)...), append(append([]byte{opStatus, 0, 0}, bringUp...), io...)...))
	// FEATURES_OK with features not offered; DRIVER_OK without it.
	f.Add([]byte{opStatus, 3, 0, opFeatures, 0, 0x80, opDevFeatures, 1, 0, opStatus, 8, 0, opStatus, 4, 0, opFeatures, 1, 0, opDevFeatures, 2, 0, opStatus, 0, 0, opStatus, 0xff, 0})
	// A queue larger than the device's maximum, misaligned rings, rings
	// outside RAM: DRIVER_OK then sets DEVICE_NEEDS_RESET.
	f.Add(append(append([]byte{}, bringUp[:15]...), opQueueSel, 0, 0, opQueueSize, 5, 0, opQueueRings, 1, 0, opQueueEnable, 1, 0, opQueueSel, 1, 0, opQueueRings, 2, 0, opQueueEnable, 1, 0, opStatus, 4, 0, opRequest, 0, 0, opStatus, 0, 0))
	f.Fuzz(func(t *testing.T, script []byte) {
		if len(script) > 3*300 {
			return
		}
		be := &heldBackend{Backend: blocktest.NewMem(64 << 10), entered: make(chan struct{}, 1)}
		dev, err := blk.New(be, blk.Config{NumQueues: tfQueues, QueueSize: tfQueueMax})
		if err != nil {
			t.Fatal(err)
		}
		if tfMem == nil {
			mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 4 << 20}})
			if err != nil {
				t.Fatal(err)
			}
			tfMem = mem
		}
		m := virtiopcitest.NewMachineOn(t, dev, tfMem, 4096)
		defer be.release() // whatever happens, nothing stays blocked
		g, tr := m.Guest, m.Transport
		offered := g.DeviceFeatures()
		for v := 0; v <= tfQueues; v++ {
			g.ProgramMSIX(v, msiAddr, uint32(0x30+v))
		}
		g.EnableMSIX(true)
		g.SetConfigVector(0)

		// The driver's view, which the transport must agree with.
		var (
			status      uint8
			drvFeatSel  uint32
			drvFeatures uint64
			queueSel    uint16
			attempted   bool // DRIVER_OK was set since the last reset
			quiet       = true
			snap        []byte
			sizes       [tfQueues]uint16
			enabled     [tfQueues]bool
			drivers     [tfQueues]*queuetest.Driver
			driverEvt   [tfQueues]bool                            // the driver follows EVENT_IDX
			vectors     [tfQueues]uint64                          // queue_msix_vector as the device took it
			want        = map[*queuetest.Driver]map[uint16]byte{} // in-flight requests by head: their type
		)
		for i := range sizes {
			sizes[i], vectors[i] = tfQueueMax, virtiopci.NoVector
		}
		ram := func() []byte {
			s, err := m.Mem.Slice(tfRingBase, tfSnapEnd-tfRingBase)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		// checkQuiet: nothing changed since the device went quiet.
		checkQuiet := func(when string) {
			if quiet && !bytes.Equal(ram(), snap) {
				t.Fatalf("%s: the device wrote guest memory after it was reset", when)
			}
		}
		snap = append([]byte(nil), ram()...)
		readStatus := func(when string) uint8 {
			s := g.Status()
			if s&^virtio.StatusDeviceNeedsReset != status || (s&virtio.StatusDeviceNeedsReset != 0 && !attempted) {
				t.Fatalf("%s: status %#x, the driver expects %#x (DRIVER_OK attempted: %v)", when, s, status, attempted)
			}
			return s
		}
		poll := func() {
			for i, d := range drivers {
				if d == nil {
					continue
				}
				for {
					u, ok, err := d.GetUsed()
					if err != nil {
						t.Fatalf("queue %d: %v", i, err)
					}
					if !ok {
						break
					}
					typ, found := want[d][u.ID]
					if !found {
						t.Fatalf("queue %d: used head %d was never submitted", i, u.ID)
					}
					delete(want[d], u.ID)
					wantLen := map[byte]int{blk.TypeIn: 513, blk.TypeOut: 1, blk.TypeFlush: 1}[typ]
					st := byte(0xff)
					if int(u.Len) == wantLen {
						st = u.Data[wantLen-1]
					}
					// A flush is refused when FLUSH was not negotiated.
					if st != blk.StatusOK && (typ != blk.TypeFlush || st != blk.StatusUnsupp || drvFeatures&blk.FeatureFlush != 0) {
						t.Fatalf("queue %d: request type %d came back with length %d, status %#x", i, typ, u.Len, st)
					}
				}
			}
		}
		pending := func() int {
			n := 0
			for _, d := range drivers {
				if d != nil {
					n += len(want[d])
				}
			}
			return n
		}
		// canInterrupt: each queue with requests has a vector and a
		// driver that agrees on EVENT_IDX, so each completion interrupts.
		canInterrupt := func() bool {
			for i, d := range drivers {
				if d != nil && len(want[d]) > 0 && (vectors[i] == virtiopci.NoVector || driverEvt[i] != (drvFeatures&virtio.FeatureEventIdx != 0)) {
					return false
				}
			}
			return true
		}
		kickAll := func() {
			for i := range tfQueues {
				if addr, ok := tr.NotifyAddr(i); ok {
					m.MMIO.Write(addr, binary.LittleEndian.AppendUint16(nil, uint16(i)))
				}
			}
		}
		reset := func() {
			before := g.Status()
			g.WriteCommon(virtiopcitest.DeviceStatus, 1, 0)
			// The reset waits for requests held on the back-end; meanwhile
			// the status reads the old value (or 0 if it is already done).
			if s := g.Status(); s != before && s != 0 {
				t.Fatalf("status %#x during a reset from %#x", s, before)
			}
			be.release()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := tr.WaitReset(ctx); err != nil {
				t.Fatal(err)
			}
			// virtio-blk waits for requests on the back-end, since they
			// read into guest memory.
			if n := be.busy(); n != 0 {
				t.Fatalf("%d requests still on the back-end after the reset completed", n)
			}
			status, drvFeatSel, drvFeatures, queueSel, attempted = 0, 0, 0, 0, false
			for i := range sizes {
				sizes[i], enabled[i], drivers[i], vectors[i] = tfQueueMax, false, nil, virtiopci.NoVector
			}
			clear(want)
			readStatus("after reset")
			quiet = true
			snap = append(snap[:0], ram()...)
		}

		for ; len(script) >= 3; script = script[3:] {
			a, b := script[1], script[2]
			frozen := status&virtio.StatusDriverOK != 0
			switch script[0] % numOps {
			case opStatus:
				if a == 0 {
					reset()
					continue
				}
				old := status
				nw := old | a&^virtio.StatusDeviceNeedsReset
				if nw&virtio.StatusFeaturesOK != 0 && old&virtio.StatusFeaturesOK == 0 &&
					(nw&virtio.StatusDriver == 0 || drvFeatures&^offered != 0 || drvFeatures&virtio.FeatureVersion1 == 0) {
					nw &^= virtio.StatusFeaturesOK
				}
				if nw&virtio.StatusDriverOK != 0 && old&virtio.StatusDriverOK == 0 {
					if nw&virtio.StatusFeaturesOK == 0 {
						nw &^= virtio.StatusDriverOK
					} else {
						checkQuiet("before DRIVER_OK")
						attempted, quiet = true, false
					}
				}
				status = nw
				g.WriteCommon(virtiopcitest.DeviceStatus, 1, uint64(a))
				readStatus("after a status write")
			case opFeatures:
				drvFeatSel = uint32(a & 3)
				v := uint64(0xffffffff)
				if b&0x80 == 0 {
					v = uint64(uint32(offered>>(32*(drvFeatSel&1))) & (uint32(b)*0x01010101 | 1))
				}
				g.WriteCommon(virtiopcitest.DriverFeatureSelect, 4, uint64(drvFeatSel))
				g.WriteCommon(virtiopcitest.DriverFeature, 4, v)
				if status&virtio.StatusFeaturesOK == 0 && drvFeatSel < 2 {
					shift := 32 * drvFeatSel
					drvFeatures = drvFeatures&^(0xffffffff<<shift) | v<<shift
				}
			case opQueueSel:
				queueSel = uint16(a % (tfQueues + 1))
				g.WriteCommon(virtiopcitest.QueueSelect, 2, uint64(queueSel))
			case opQueueSize:
				v := uint16(1) << (a % 7)
				if a&0x80 != 0 {
					v = uint16(b)
				}
				g.WriteCommon(virtiopcitest.QueueSize, 2, uint64(v))
				if q := int(queueSel); q < tfQueues && !enabled[q] && !frozen {
					sizes[q] = v
					drivers[q] = nil // its layout no longer matches
				}
			case opQueueRings:
				q := int(queueSel)
				if q >= tfQueues || enabled[q] || frozen {
					continue
				}
				base := tfRingBase + uint64(q)*tfRingSpan
				var cfg virtio.QueueConfig
				drivers[q] = nil
				if s := sizes[q]; s != 0 && s&(s-1) == 0 && s <= tfQueueMax {
					checkQuiet("before laying out rings")
					evt := drvFeatures&virtio.FeatureEventIdx != 0
					d, err := queuetest.New(m.Mem, base, s, tfDataSize, evt)
					if err != nil {
						t.Fatal(err)
					}
					snap = append(snap[:0], ram()...)
					cfg = d.Config()
					if a&3 == 0 {
						drivers[q], driverEvt[q] = d, evt
						want[d] = map[uint16]byte{}
					}
				} else {
					cfg = virtio.QueueConfig{DescTable: base, AvailRing: base + 0x1000, UsedRing: base + 0x2000}
				}
				if a&1 != 0 {
					cfg.DescTable += 8
				}
				if a&2 != 0 {
					cfg.UsedRing += 1 << 40
				}
				for _, r := range []struct{ reg, v uint64 }{{virtiopcitest.QueueDesc, cfg.DescTable}, {virtiopcitest.QueueDriver, cfg.AvailRing}, {virtiopcitest.QueueDevice, cfg.UsedRing}} {
					g.WriteCommon(r.reg, 4, r.v&0xffffffff)
					g.WriteCommon(r.reg+4, 4, r.v>>32)
				}
			case opQueueEnable:
				g.WriteCommon(virtiopcitest.QueueEnable, 2, uint64(a&1))
				if q := int(queueSel); q < tfQueues && a&1 != 0 && !frozen {
					enabled[q] = true
				}
			case opQueueVector:
				v := uint64(1 + a%tfQueues)
				if a&0x80 != 0 {
					v = virtiopci.NoVector
				}
				g.WriteCommon(virtiopcitest.QueueMSIXVector, 2, v)
				if q := int(queueSel); q < tfQueues && !enabled[q] && !frozen {
					vectors[q] = v
				}
			case opRequest:
				q := int(a % tfQueues)
				d := drivers[q]
				if d == nil || !frozen || !enabled[q] {
					continue // only on rings the device runs
				}
				sector := uint64(b % 128)
				var h uint16
				var err error
				var typ byte
				switch b >> 6 {
				case 0, 1:
					typ = blk.TypeIn
					h, err = d.Add([][]byte{header(blk.TypeIn, sector)}, []uint32{512, 1})
				case 2:
					typ = blk.TypeOut
					h, err = d.Add([][]byte{header(blk.TypeOut, sector), bytes.Repeat([]byte{b}, 512)}, []uint32{1})
				case 3:
					typ = blk.TypeFlush
					h, err = d.Add([][]byte{header(blk.TypeFlush, 0)}, []uint32{1})
				}
				if err != nil {
					continue // ring or data area full
				}
				want[d][h] = typ
			case opKick:
				if addr, ok := tr.NotifyAddr(int(a % 3)); ok {
					m.MMIO.Write(addr, binary.LittleEndian.AppendUint16(nil, uint16(a%3)))
				}
			case opHold:
				if a&1 != 0 {
					be.hold()
				} else {
					be.release()
				}
			case opPoll:
				poll()
			case opDevFeatures:
				sel := uint64(a & 3)
				g.WriteCommon(virtiopcitest.DeviceFeatureSelect, 4, sel)
				var want uint64
				if sel < 2 {
					want = uint64(uint32(offered >> (32 * sel)))
				}
				if got := g.ReadCommon(virtiopcitest.DeviceFeature, 4); got != want {
					t.Fatalf("device_feature[%d] reads %#x, offered %#x", sel, got, want)
				}
				want = 0
				if drvFeatSel < 2 {
					want = uint64(uint32(drvFeatures >> (32 * drvFeatSel)))
				}
				if got := g.ReadCommon(virtiopcitest.DriverFeature, 4); got != want {
					t.Fatalf("driver_feature[%d] reads %#x, the driver wrote %#x", drvFeatSel, got, want)
				}
			case opAwait:
				// The device must take a request to the back-end once
				// kicked, if it runs and has one it has not completed
				// (completions are seen through their interrupts).
				if !frozen || !be.held() || g.Status()&virtio.StatusDeviceNeedsReset != 0 || !canInterrupt() {
					continue
				}
				kickAll()
				for {
					poll()
					if pending() == 0 || be.busy() > 0 {
						break
					}
					select {
					case <-be.entered:
					case <-m.Router.Messages():
					case <-time.After(10 * time.Second):
						t.Fatalf("kicked with %d requests, the device took none to the back-end", pending())
					}
				}
			case opWait:
				// Only when every request can complete and interrupt: the
				// device runs and the back-end is free.
				if !frozen || be.held() || g.Status()&virtio.StatusDeviceNeedsReset != 0 || !canInterrupt() {
					continue
				}
				kickAll()
				for {
					poll()
					left := pending()
					if left == 0 {
						break
					}
					if _, err := m.Router.Wait(10 * time.Second); err != nil {
						t.Fatalf("%d requests never completed: %v", left, err)
					}
				}
			}
		}
		poll()
		reset()
		checkQuiet("at the end")
	})
}
