package console_test

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/devices/virtio/console"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// lockedBuffer collects the console's output (written from its output
// goroutine).
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// fuzzMem is the guest RAM of FuzzQueues, reused across inputs (a fuzz
// worker runs one at a time, and a first touch of a page costs more here
// than the whole input): queuetest.New clears the queue and data areas.
var fuzzMem *memory.Memory

// FuzzQueues serves receive and transmit chains a hostile driver built
// (see queuetest.Hostile: read-only and writable buffers in any order,
// empty ones, buffers outside RAM or straddling its end, loops, indirect
// tables) while host input arrives. The device must not panic or hang,
// and:
//   - it writes guest memory only inside the writable buffers of receive
//     chains, up to their used lengths, and never into transmit chains;
//   - every transmit chain comes back with length 0, and the output is
//     exactly the readable bytes of the valid transmit chains, in order;
//   - what the guest receives, in used order, is the input from its
//     start; either all of it arrives or the guest's buffers ran out (every
//     receive chain came back), and the counters agree.
func FuzzQueues(f *testing.F) {
	// Receive: a 64-byte and a 4 KiB writable buffer; transmit: two
	// readable buffers and a chain with a writable one.
	f.Add([]byte{0, 0x01, 0x04, 0, 0x01, 0xff}, []byte{1, 0x00, 0x04, 0x00, 0x08, 0, 0x01, 0x04}, []byte("hello, guest"), uint8(0))
	// Receive: read-only, empty, out of RAM, straddling, a loop, then an
	// indirect chain; transmit: readable after writable, indirect.
	f.Add([]byte{0, 0x00, 0x04, 0, 0x01, 0, 0, 0x05, 0x40, 0, 0x07, 0x40, 8, 0x01, 0x40, 5, 0x01, 0x01, 0x01, 0x02},
		[]byte{1, 0x01, 0x04, 0x00, 0x04, 4, 0x00, 0x02}, []byte("input that needs more than one buffer"), uint8(3))
	f.Fuzz(func(t *testing.T, rxScript, txScript, input []byte, opts uint8) {
		const size = 16
		if fuzzMem == nil {
			m, err := memory.New([]memory.Layout{{GPA: 0x10000, Size: 0x20000}, {GPA: 0x40000, Size: 0x20000}})
			if err != nil {
				t.Fatal(err)
			}
			fuzzMem = m
		}
		mem := fuzzMem
		var features uint64 = virtio.FeatureVersion1
		indirect := opts&1 != 0
		if indirect {
			features |= virtio.FeatureIndirectDesc
		}
		input = bytes.Repeat(input, 1+int(opts>>1&7)*40) // input of several 4 KiB chunks too
		rxd, err := queuetest.New(mem, 0x10000, size, 0x1f000, false)
		if err != nil {
			t.Fatal(err)
		}
		txd, err := queuetest.New(mem, 0x40000, size, 0x1f000, false)
		if err != nil {
			t.Fatal(err)
		}
		rxh, err := queuetest.NewHostile(rxd, indirect)
		if err != nil {
			t.Fatal(err)
		}
		txh, err := queuetest.NewHostile(txd, indirect)
		if err != nil {
			t.Fatal(err)
		}
		rxPosted, txPosted := rxh.Post(rxScript), txh.Post(txScript)
		if err := rxh.Freeze(); err != nil {
			t.Fatal(err)
		}
		if err := txh.Freeze(); err != nil {
			t.Fatal(err)
		}
		rxq, err := virtio.NewQueue(mem, rxd.Config(), size, features)
		if err != nil {
			t.Fatal(err)
		}
		txq, err := virtio.NewQueue(mem, txd.Config(), size, features)
		if err != nil {
			t.Fatal(err)
		}
		irq := queuetest.NewInterrupt()
		rxq.SetInterrupt(irq)
		txq.SetInterrupt(irq)
		out := &lockedBuffer{}
		d, err := console.New(bytes.NewReader(input), out, console.Config{QueueSize: size})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Activate(&virtio.Activation{Memory: mem, Features: features, Queues: []*virtio.Queue{rxq, txq}}); err != nil {
			t.Fatal(err)
		}
		// Both queues are polled at activation. Done: every transmit
		// chain is back, and the input all arrived or the receive chains
		// ran out.
		werr := irq.WaitFor(func() bool {
			return txd.UsedIdx() == uint16(len(txPosted)) &&
				(d.Stats().InBytes == uint64(len(input)) || rxd.UsedIdx() == uint16(len(rxPosted)))
		}, 10*time.Second)
		d.Reset()
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		if werr != nil {
			t.Fatalf("tx %d of %d back, rx %d of %d back, %d of %d input bytes delivered: %v",
				txd.UsedIdx(), len(txPosted), rxd.UsedIdx(), len(rxPosted), d.Stats().InBytes, len(input), werr)
		}

		txUsed, err := txh.Collect()
		if err != nil {
			t.Fatal(err)
		}
		if err := txh.CheckWrites(); err != nil {
			t.Fatalf("transmit queue: %v", err)
		}
		var want []byte
		for _, u := range txUsed {
			if u.Len != 0 {
				t.Fatalf("transmit chain %d came back with length %d", u.Chain.Head, u.Len)
			}
			if !u.Chain.Valid {
				continue
			}
			for _, x := range u.Chain.Descs {
				if x.Flags&queuetest.FlagWrite == 0 && x.Len > 0 {
					b, err := mem.Slice(x.Addr, uint64(x.Len))
					if err != nil {
						t.Fatal(err)
					}
					want = append(want, b...)
				}
			}
		}
		if !bytes.Equal(out.buf.Bytes(), want) {
			t.Fatalf("output of %d bytes, want the %d readable bytes of the transmit chains", out.buf.Len(), len(want))
		}
		if st := d.Stats(); st.OutBytes != uint64(len(want)) {
			t.Fatalf("OutBytes %d for %d bytes written", st.OutBytes, len(want))
		}

		rxUsed, err := rxh.Collect()
		if err != nil {
			t.Fatal(err)
		}
		if err := rxh.CheckWrites(); err != nil {
			t.Fatalf("receive queue: %v", err)
		}
		var got []byte
		for _, u := range rxUsed {
			got = append(got, u.Data...)
		}
		if !bytes.HasPrefix(input, got) {
			t.Fatalf("the guest received %d bytes that are not the input's start", len(got))
		}
		if st := d.Stats(); st.InBytes != uint64(len(got)) {
			t.Fatalf("InBytes %d, the guest received %d", st.InBytes, len(got))
		}
		if len(got) < len(input) && len(rxUsed) != len(rxPosted) {
			t.Fatalf("%d of %d input bytes delivered with %d of %d receive chains unused", len(got), len(input), len(rxPosted)-len(rxUsed), len(rxPosted))
		}
	})
}
