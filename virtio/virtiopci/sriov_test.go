package virtiopci_test

import (
	"encoding/binary"
	"sync"
	"testing"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/pci/pcitest"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

const sriovECAM = 0xe0000000

// TestSRIOVVirtio: a virtio physical function offers VIRTIO_F_SR_IOV and
// the SR-IOV capability; the guest enables two VFs, each a virtio
// function of the PF's type answering at its own place in the PF's VF
// BAR; a Function Level Reset of VF 0 resets it and leaves VF 1 alone;
// disabling the VFs releases both.
func TestSRIOVVirtio(t *testing.T) {
	mmio, pio := bus.New("mmio"), bus.New("pio")
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	root, err := pci.NewRoot(pci.RootConfig{MMIO: mmio, PIO: pio,
		MMIO32: pci.Window{Base: 0xc0000000, Size: 1 << 28}, PIOWindow: pci.Window{Base: 0x1000, Size: 0x1000}})
	if err != nil {
		t.Fatal(err)
	}
	pio.Register(pci.ConfigAddressPort, pci.ConfigPortsSize, root.ConfigPorts())
	mmio.Register(sriovECAM, pci.ECAMSize, root.ECAM())
	router := pcitest.NewRouter(64)

	var mu sync.Mutex
	vfDevs := map[int]*stubDev{}
	var released []int
	pfDev := &stubDev{}
	pf, err := virtiopci.New(pfDev, mem, virtiopci.Options{Router: router, SRIOV: &virtiopci.SRIOV{
		TotalVFs: 3,
		NewVF: func(cap *pci.SRIOV, i int) (*virtiopci.Transport, error) {
			d := &stubDev{}
			mu.Lock()
			vfDevs[i] = d
			mu.Unlock()
			return virtiopci.New(d, mem, virtiopci.Options{Router: router, VirtualFunction: &virtiopci.VirtualFunction{PF: cap, Index: i}})
		},
		ReleaseVF: func(i int, _ *virtiopci.Transport) {
			mu.Lock()
			released = append(released, i)
			mu.Unlock()
		},
		OnError: func(err error) { t.Errorf("VF: %v", err) },
	}})
	if err != nil {
		t.Fatal(err)
	}
	a := pci.BDF{Device: 4}
	if err := root.Add(a, pf); err != nil {
		t.Fatal(err)
	}
	g, err := virtiopcitest.Probe(mmio, pio, mem, a)
	if err != nil {
		t.Fatal(err)
	}
	if g.DeviceFeatures()&virtio.FeatureSRIOV == 0 {
		t.Errorf("the PF does not offer VIRTIO_F_SR_IOV: %#x", g.DeviceFeatures())
	}
	ecam := func(a pci.BDF, off int) uint64 {
		return sriovECAM + uint64(a.Device)<<15 | uint64(a.Function)<<12 | uint64(off)
	}
	r32 := func(addr uint64) uint32 {
		var b [4]byte
		mmio.Read(addr, b[:])
		return binary.LittleEndian.Uint32(b[:])
	}
	w := func(addr uint64, n int, v uint32) {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], v)
		mmio.Write(addr, b[:n])
	}
	cap := 0
	for off := 0x100; off != 0; off = int(r32(ecam(a, off)) >> 20) {
		if r32(ecam(a, off))&0xffff == pci.ExtCapSRIOV {
			cap = off
			break
		}
	}
	if cap == 0 {
		t.Fatal("no SR-IOV capability")
	}
	if id := r32(ecam(a, cap+0x18)) >> 16; id != uint32(pf.DeviceID()) {
		t.Errorf("VF Device ID %#x, want the PF's %#x", id, pf.DeviceID())
	}
	base := uint64(r32(ecam(a, cap+0x24))&^0xf) | uint64(r32(ecam(a, cap+0x28)))<<32
	w(ecam(a, cap+0x10), 2, 2)
	w(ecam(a, cap+0x08), 2, pci.SRIOVEnable|pci.SRIOVMSE)

	size := pf.BARSize()
	common := func(vf int, off uint64) uint64 { return base + uint64(vf)*size + virtiopci.CommonOffset + off }
	for i := range 2 {
		if n := r32(common(i, 0x10)) >> 16; n != 3 {
			t.Errorf("VF %d: num_queues %d, want 3", i, n)
		}
		w(common(i, 0x14), 1, 1) // ACKNOWLEDGE
	}
	vf0 := pci.BDF{Device: 4, Function: 1}
	exp := 0
	for p := int(r32(ecam(vf0, pci.RegCapabilitiesPtr)) & 0xff); p != 0; p = int(r32(ecam(vf0, p))>>8) & 0xff {
		if r32(ecam(vf0, p))&0xff == pci.CapExpress {
			exp = p
		}
	}
	if exp == 0 {
		t.Fatal("VF 0 has no Express capability")
	}
	w(ecam(vf0, exp+8), 2, 1<<15)
	if s := r32(common(0, 0x14)) & 0xff; s != 0 {
		t.Errorf("VF 0's device_status %#x after its FLR, want 0", s)
	}
	if s := r32(common(1, 0x14)) & 0xff; s != 1 {
		t.Errorf("VF 1's device_status %#x after VF 0's FLR, want 1 (untouched)", s)
	}
	w(ecam(a, cap+0x08), 2, 0)
	mu.Lock()
	defer mu.Unlock()
	if len(released) != 2 {
		t.Errorf("released VFs %v, want both", released)
	}
}
