package virtiopci_test

import (
	"encoding/binary"
	"sync"
	"testing"

	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// sinkDev serves every queue from its own goroutine, completing each chain
// with its whole writable length, so fuzzed rings get walked concurrently
// with fuzzed register writes.
type sinkDev struct {
	stubDev
	wg      sync.WaitGroup
	stop    chan struct{}
	running sync.Mutex // held while goroutines may run
}

func (d *sinkDev) Activate(a *virtio.Activation) error {
	d.stop = make(chan struct{})
	for _, q := range a.Queues {
		if q == nil {
			continue
		}
		d.wg.Add(1)
		go func(q *virtio.Queue) {
			defer d.wg.Done()
			for {
				select {
				case <-d.stop:
					return
				case <-q.Kicks():
				}
				for more := true; more; {
					q.DisableNotifications()
					for {
						c, err := q.Next()
						if err != nil {
							return
						}
						if c == nil {
							break
						}
						q.Push(c.Head, uint32(c.Writable.Len()))
					}
					q.Signal()
					more, _ = q.EnableNotifications()
				}
			}
		}(q)
	}
	return nil
}

func (d *sinkDev) Reset() {
	close(d.stop)
	d.wg.Wait()
}

type op struct {
	kind  byte
	off   uint16
	width byte
	val   uint64
}

func encode(ops []op) []byte {
	var b []byte
	for _, o := range ops {
		b = append(b, o.kind, byte(o.off), byte(o.off>>8), o.width)
		b = binary.LittleEndian.AppendUint64(b, o.val)
	}
	return b
}

// FuzzTransport drives BAR 0, configuration space, kicks and guest RAM
// with arbitrary operations. Nothing may panic or deadlock, and a reset at
// the end must stop the device and read back status 0.
func FuzzTransport(f *testing.F) {
	const (
		bar = iota
		barRead
		cfg
		kick
		ram
	)
	w := func(off uint16, width byte, v uint64) op { return op{bar, off, width, v} }
	// A valid bring-up of queue 0 with rings at 0x10000, then a chain.
	f.Add(encode([]op{
		w(0x14, 1, 0), w(0x14, 1, 1), w(0x14, 1, 3),
		w(0x08, 4, 1), w(0x0c, 4, 1), w(0x14, 1, 0xb),
		w(0x16, 2, 0), w(0x18, 2, 8), w(0x20, 8, 0x10000), w(0x28, 8, 0x10100), w(0x30, 8, 0x10200), w(0x1c, 2, 1),
		w(0x14, 1, 0xf),
		{ram, 0x0000, 8, 0x20000}, {ram, 0x0008, 8, 0x0002_0000_0040}, // desc 0: 0x20000, len 64, WRITE
		{ram, 0x0102, 2, 1}, // avail idx 1
		{kick, 0, 0, 0},
	}))
	f.Add(encode([]op{{cfg, 0x04, 2, 0}, {cfg, 0x10, 4, 0xffffffff}, w(0x3000, 2, 0), {cfg, 0x04, 2, 6}}))
	f.Add(encode([]op{w(0x14, 1, 0xff), w(0x1a, 2, 3), {barRead, 0x1000, 1, 0}, {cfg, 0x52, 2, 0xc000}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := newRig(t)
		dev := &sinkDev{}
		tr, err := virtiopci.New(dev, r.mem, virtiopci.Options{Router: r.router})
		if err != nil {
			t.Fatal(err)
		}
		a := pci.BDF{Device: 3}
		if err := r.root.Add(a, tr); err != nil {
			t.Fatal(err)
		}
		g, err := virtiopcitest.Probe(r.mmio, r.pio, r.mem, a)
		if err != nil {
			t.Fatal(err)
		}
		for len(data) >= 12 && len(data) < 12*200 {
			o := op{data[0] % 5, binary.LittleEndian.Uint16(data[1:]), data[3], binary.LittleEndian.Uint64(data[4:])}
			data = data[12:]
			width := []int{1, 2, 4, 8}[o.width%4]
			var b [8]byte
			binary.LittleEndian.PutUint64(b[:], o.val)
			switch o.kind {
			case bar:
				r.mmio.Write(g.BAR+uint64(o.off)%tr.BARSize(), b[:width])
			case barRead:
				r.mmio.Read(g.BAR+uint64(o.off)%tr.BARSize(), b[:width])
			case cfg:
				if width == 8 {
					width = 4
				}
				off := int(o.off&0xff) &^ (width - 1)
				r.root.WriteConfig(a, off, b[:width])
			case kick:
				tr.Notify(int(o.off % 4))
			case ram:
				// Rings live in the first 64 KiB above 0x10000.
				r.mem.WriteAt(b[:width], int64(0x10000+uint64(o.off)))
			}
		}
		// Whatever happened, the guest can reset the device (re-enabling
		// the BAR first, in case the ops turned decoding off or moved it).
		r.root.WriteConfig(a, pci.RegBAR0, binary.LittleEndian.AppendUint32(nil, uint32(g.BAR)|4))
		r.root.WriteConfig(a, pci.RegBAR0+4, []byte{0, 0, 0, 0})
		r.root.WriteConfig(a, pci.RegCommand, []byte{pci.CommandMemory, 0})
		if err := g.Reset(); err != nil {
			t.Fatal(err)
		}
		if dev.stop != nil {
			select {
			case <-dev.stop:
			default:
				t.Fatal("device still running after reset")
			}
		}
	})
}
