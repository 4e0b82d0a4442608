package virtiopci

import (
	"fmt"

	"github.com/viovmm/vio/pci"
)

// SRIOV makes a virtio function an SR-IOV physical function (virtio 1.2
// VIRTIO_F_SR_IOV; Linux's virtio_pci then accepts writes to
// sriov_numvfs). Its virtual functions are virtio functions of the same
// type, each with a back-end of its own.
type SRIOV struct {
	// TotalVFs is how many VFs the guest may enable (1..pci.MaxVFs).
	TotalVFs int
	// NewVF builds VF i: a Transport made with New and
	// Options.VirtualFunction{PF: pf, Index: i}, with the PF's number of
	// queues and MSI-X vectors (its BAR must match the capability's).
	NewVF func(pf *pci.SRIOV, i int) (*Transport, error)
	// ReleaseVF stops VF i once the guest disabled it.
	ReleaseVF func(i int, vf *Transport)
	// OnError hears of a VF that could not be built.
	OnError func(error)
}

// VirtualFunction places a Transport as VF Index of the physical function
// whose SR-IOV capability is PF.
type VirtualFunction struct {
	PF    *pci.SRIOV
	Index int
}

// addExpress gives an Express function its PCIe capability, with
// Function Level Reset on a VF, and a physical function its SR-IOV
// capability.
func (t *Transport) addExpress(opts Options) error {
	switch {
	case opts.VirtualFunction != nil:
		_, err := pci.AddExpressCapabilityFLR(t.Config, pci.ExpressIntegratedEndpoint, t.functionReset)
		return err
	case opts.Express || opts.SRIOV != nil:
		if _, err := pci.AddExpressCapability(t.Config, pci.ExpressIntegratedEndpoint); err != nil {
			return err
		}
	}
	if s := opts.SRIOV; s != nil {
		if s.NewVF == nil {
			return fmt.Errorf("%w: SR-IOV without NewVF", ErrConfig)
		}
		var bars [pci.NumBARs]pci.BAR
		bars[BARIndex] = pci.BAR{Kind: pci.BARMem64, Size: t.barSize}
		var cap *pci.SRIOV
		var err error
		cap, err = pci.AddSRIOV(t.Config, pci.SRIOVConfig{
			TotalVFs:   s.TotalVFs,
			VFDeviceID: t.DeviceID(),
			VFBARs:     bars,
			NewVF: func(i int) (pci.Function, error) {
				vf, err := s.NewVF(cap, i)
				if err != nil {
					return nil, err
				}
				return vf, nil
			},
			ReleaseVF: func(i int, f pci.Function) {
				if s.ReleaseVF != nil {
					s.ReleaseVF(i, f.(*Transport))
				}
			},
			OnError: s.OnError,
		})
		return err
	}
	return nil
}

// DeviceID is the function's PCI device ID as its PF announces it
// (a VF's own register reads all ones).
func (t *Transport) DeviceID() uint16 { return DeviceIDBase + uint16(t.dev.Type()) }

// functionReset is a VF's Function Level Reset: the device is reset as
// by a driver writing 0 to device_status, MSI-X goes back to its power-on
// state, and bus mastering stops. It runs on the vCPU that wrote the
// Express capability; the device's own reset continues on a goroutine.
func (t *Transport) functionReset() {
	t.mu.Lock()
	t.resetDeviceLocked()
	t.mu.Unlock()
	t.msix.Reset()
	cmd := t.Command() &^ (pci.CommandBusMaster | pci.CommandMemory | pci.CommandIO)
	t.SetBytes(pci.RegCommand, []byte{byte(cmd), byte(cmd >> 8)})
}
