package vmm

import (
	"fmt"
	"sync"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci"
)

// sriovDisk prepares the virtual functions of disk d, an SR-IOV physical
// function (docs/sriov.md): every VF's device and back-end are built now,
// at boot, so that a confined vio never opens an image later, and are
// owned by the PF (plug). It returns what makes the PF's SR-IOV options
// once its slot is known, nil for a disk without VFs.
//
// When the guest enables VFs, each gets a fresh transport at function
// 1+i of the PF's slot, with MSI-X routes and a DMA view of its own; when
// it disables them, the devices are reset and the routes released.
func (v *VM) sriovDisk(name string, d *config.Disk) (func(slot uint8) *virtiopci.SRIOV, error) {
	if len(d.VirtualFunctions) == 0 {
		return nil, nil
	}
	vfs := make([]*sriovVF, len(d.VirtualFunctions))
	for i := range d.VirtualFunctions {
		c := &d.VirtualFunctions[i]
		// The VF's BAR must be the PF's: the same queues.
		if c.NumQueues == 0 {
			c.NumQueues = d.NumQueues
		}
		if c.QueueSize == 0 {
			c.QueueSize = d.QueueSize
		}
		dev, err := v.newDisk(c)
		if err != nil {
			return nil, fmt.Errorf("virtual function %d (%s): %w", i, c.Path, err)
		}
		vfs[i] = &sriovVF{dev: dev}
	}
	// Closed before the back-ends newDisk registered (owned closers run
	// in reverse), so no VF writes to a closed image.
	v.closers = append(v.closers, closerFunc(func() error {
		for _, vf := range vfs {
			vf.settle()
			vf.dev.Reset()
		}
		return nil
	}))
	return func(slot uint8) *virtiopci.SRIOV {
		return &virtiopci.SRIOV{
			TotalVFs: len(vfs),
			NewVF: func(cap *pci.SRIOV, i int) (*virtiopci.Transport, error) {
				vf := vfs[i]
				vf.settle() // a reset from the last disable may still run
				msi := v.msi.newDevice()
				t, err := virtiopci.New(vf.dev, v.dmaForFunction(slot, uint8(1+i)), virtiopci.Options{
					Router: msi, IOEvents: v.ioevents, AccessPlatform: v.iommu != nil,
					OnEvent:         v.deviceEvents(fmt.Sprintf("%s-vf%d", name, i)),
					VirtualFunction: &virtiopci.VirtualFunction{PF: cap, Index: i},
				})
				if err != nil {
					msi.release()
					return nil, err
				}
				vf.mu.Lock()
				vf.msi = msi
				vf.mu.Unlock()
				v.log.Info("SR-IOV virtual function enabled", "disk", name, "vf", i, "bdf", fmt.Sprintf("0000:00:%02x.%d", slot, 1+i))
				return t, nil
			},
			ReleaseVF: func(i int, _ *virtiopci.Transport) {
				if i < 0 || i >= len(vfs) {
					return
				}
				vfs[i].retire()
			},
			OnError: func(err error) { v.log.Warn("SR-IOV", "disk", name, "err", err) },
		}
	}, nil
}

// sriovVF is one virtual function's device and what its current
// enablement holds.
type sriovVF struct {
	dev virtio.Device

	mu        sync.Mutex
	msi       *deviceMSI
	resetting chan struct{} // closed when the last retire's reset is done
}

// retire resets the device and releases its interrupt routes on a
// goroutine: it runs on the vCPU that cleared VF Enable, which must not
// wait for requests in flight.
func (vf *sriovVF) retire() {
	vf.mu.Lock()
	msi := vf.msi
	vf.msi = nil
	done := make(chan struct{})
	vf.resetting = done
	vf.mu.Unlock()
	go func() {
		vf.dev.Reset()
		if msi != nil {
			msi.release()
		}
		close(done)
	}()
}

// settle waits for a retire's reset to finish.
func (vf *sriovVF) settle() {
	vf.mu.Lock()
	done := vf.resetting
	vf.mu.Unlock()
	if done != nil {
		<-done
	}
}
