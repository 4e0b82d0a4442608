package pci_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/viovmm/vio/pci"
)

// vfBARSize is each test VF's one BAR (64-bit, like virtio's).
const vfBARSize = 0x4000

// testVF is a virtual function: a configuration space from NewVFConfig
// and a BAR that records accesses.
type testVF struct {
	*pci.Config
	bar *regDev
	flr int
}

func (*testVF) BARMapped(pci.Region, bool) {}

// sriovRig is a physical function at 00:03.0 with up to four VFs.
type sriovRig struct {
	*rig
	pf  *testFn
	s   *pci.SRIOV
	off int // the SR-IOV capability, as the guest finds it

	mu       sync.Mutex
	made     map[int]*testVF
	count    int // VFs made, ever
	released []int
	errs     []string
	badSize  int // the VF index made with a wrong BAR size (-1: none)
}

var pfAddr = pci.BDF{Device: 3}

func newSRIOVRig(t *testing.T) *sriovRig {
	t.Helper()
	r := &sriovRig{rig: newRig(t), made: map[int]*testVF{}, badSize: -1}
	r.pf = &testFn{Config: pci.NewConfig(pci.Header{VendorID: 0x1af4, DeviceID: 0x1042, Class: 0x010000, Express: true}), b0: &regDev{}}
	must(t, r.pf.SetBAR(0, pci.BAR{Kind: pci.BARMem32, Size: 0x1000, Device: r.pf.b0}))
	_, err := pci.AddExpressCapability(r.pf.Config, pci.ExpressIntegratedEndpoint)
	must(t, err)
	var vfBARs [pci.NumBARs]pci.BAR
	vfBARs[0] = pci.BAR{Kind: pci.BARMem64, Size: vfBARSize}
	r.s, err = pci.AddSRIOV(r.pf.Config, pci.SRIOVConfig{
		TotalVFs: 4, VFDeviceID: 0x1042, VFBARs: vfBARs,
		NewVF: func(i int) (pci.Function, error) {
			vf := &testVF{Config: r.s.NewVFConfig(i, pci.Header{Class: 0x010000, Express: true}), bar: &regDev{}}
			size := uint64(vfBARSize)
			r.mu.Lock()
			if i == r.badSize {
				size *= 2
			}
			r.mu.Unlock()
			if err := vf.SetBAR(0, pci.BAR{Kind: pci.BARMem64, Size: size, Device: vf.bar}); err != nil {
				return nil, err
			}
			if _, err := pci.AddExpressCapabilityFLR(vf.Config, pci.ExpressIntegratedEndpoint, func() { vf.flr++ }); err != nil {
				return nil, err
			}
			r.mu.Lock()
			r.made[i] = vf
			r.count++
			r.mu.Unlock()
			return vf, nil
		},
		ReleaseVF: func(i int, f pci.Function) {
			r.mu.Lock()
			r.released = append(r.released, i)
			r.mu.Unlock()
		},
		OnError: func(err error) {
			r.mu.Lock()
			r.errs = append(r.errs, err.Error())
			r.mu.Unlock()
		},
	})
	must(t, err)
	must(t, r.root.Add(pfAddr, r.pf))
	// The guest's walk of the extended capability list.
	for off := 0x100; off != 0; {
		h := r.ecam32(pfAddr, off)
		if h&0xffff == pci.ExtCapSRIOV {
			r.off = off
			break
		}
		off = int(h >> 20)
	}
	if r.off == 0 || r.off != r.s.Offset() {
		t.Fatalf("the guest finds the SR-IOV capability at %#x, it is at %#x", r.off, r.s.Offset())
	}
	return r
}

func (r *sriovRig) ecam32(a pci.BDF, off int) uint32 {
	var b [4]byte
	r.mmio.Read(ecamBase+uint64(a.Device)<<15|uint64(a.Function)<<12|uint64(off), b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (r *sriovRig) ecamWrite(a pci.BDF, off, n int, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	r.mmio.Write(ecamBase+uint64(a.Device)<<15|uint64(a.Function)<<12|uint64(off), b[:n])
}

// enable writes NumVFs and then VF Enable with VF MSE, as Linux does.
func (r *sriovRig) enable(n int) {
	r.ecamWrite(pfAddr, r.off+0x10, 2, uint32(n))
	r.ecamWrite(pfAddr, r.off+0x08, 2, pci.SRIOVEnable|pci.SRIOVMSE)
}

func (r *sriovRig) vfBAR() uint64 {
	return uint64(r.ecam32(pfAddr, r.off+0x24))&^0xf | uint64(r.ecam32(pfAddr, r.off+0x28))<<32
}

// TestSRIOVEnableDisable: the capability reads as the spec lays it out,
// the Root places the VF BAR with room for TotalVFs, enabling three VFs
// plugs them in at 03.1-03.3 with their BARs where the PF's VF BAR puts
// each, NumVFs cannot change under enabled VFs, and disabling unplugs and
// releases them all.
func TestSRIOVEnableDisable(t *testing.T) {
	r := newSRIOVRig(t)
	if v := r.ecam32(pfAddr, r.off+0x0c); v != 4|4<<16 {
		t.Errorf("InitialVFs/TotalVFs %#x, want 4/4", v)
	}
	if v := r.ecam32(pfAddr, r.off+0x14); v != 1|1<<16 {
		t.Errorf("First VF Offset/VF Stride %#x, want 1/1", v)
	}
	if v := r.ecam32(pfAddr, r.off+0x18) >> 16; v != 0x1042 {
		t.Errorf("VF Device ID %#x", v)
	}
	base := r.vfBAR()
	if base == 0 || base%vfBARSize != 0 {
		t.Fatalf("VF BAR0 at %#x: not placed, or not aligned to one VF's %#x bytes", base, vfBARSize)
	}
	// Sizing it as Linux does reads back one VF's size.
	r.ecamWrite(pfAddr, r.off+0x24, 4, 0xffffffff)
	if v := r.ecam32(pfAddr, r.off+0x24); v&^0xf != ^uint32(vfBARSize-1) || v&0x6 != 0x4 {
		t.Errorf("VF BAR0 sizes as %#x", v)
	}
	r.ecamWrite(pfAddr, r.off+0x24, 4, uint32(base)|0x4)

	r.enable(3)
	for i := range 4 {
		a := pci.BDF{Device: 3, Function: uint8(1 + i)}
		id := r.ecam32(a, 0)
		if i == 3 {
			if id != 0xffffffff || r.ecam32(a, 8) != 0xffffffff {
				t.Errorf("VF 3 was not enabled, but %s answers", a)
			}
			continue
		}
		if id != 0xffffffff {
			t.Errorf("VF %d's vendor and device ID read %#x, want all ones", i, id)
		}
		if cls := r.ecam32(a, 8) >> 8; cls != 0x010000 {
			t.Errorf("VF %d's class %#x", i, cls)
		}
		if b := r.ecam32(a, 0x10); b != 0 {
			t.Errorf("VF %d's BAR0 register reads %#x, want 0", i, b)
		}
		// Its BAR decodes at the PF's VF BAR plus i VF sizes.
		r.mmio.Write(base+uint64(i)*vfBARSize+8, []byte{byte(0x40 + i)})
		r.mu.Lock()
		vf := r.made[i]
		r.mu.Unlock()
		if vf == nil || vf.bar.mem[8] != byte(0x40+i) {
			t.Errorf("a write to VF %d's BAR did not reach it", i)
		}
	}
	// NumVFs is fixed while VFs are enabled.
	r.ecamWrite(pfAddr, r.off+0x10, 2, 2)
	if n := r.ecam32(pfAddr, r.off+0x10) & 0xffff; n != 3 {
		t.Errorf("NumVFs changed to %d under enabled VFs", n)
	}
	if got := len(r.s.VFs()); got != 3 {
		t.Errorf("%d live VFs, want 3", got)
	}
	// VF MSE off: the VFs stay, their BARs stop decoding.
	r.ecamWrite(pfAddr, r.off+0x08, 2, pci.SRIOVEnable)
	if r.mmio.Write(base+8, []byte{1}) {
		t.Error("VF 0's BAR decodes with VF MSE clear")
	}
	r.ecamWrite(pfAddr, r.off+0x08, 2, pci.SRIOVEnable|pci.SRIOVMSE)
	if !r.mmio.Write(base+8, []byte{1}) {
		t.Error("VF 0's BAR does not decode with VF MSE set again")
	}

	r.ecamWrite(pfAddr, r.off+0x08, 2, 0)
	for i := range 3 {
		a := pci.BDF{Device: 3, Function: uint8(1 + i)}
		if id := r.ecam32(a, 8); id != 0xffffffff {
			t.Errorf("VF %d still answers at %s after VF Enable was cleared", i, a)
		}
		if r.mmio.Write(base+uint64(i)*vfBARSize, []byte{1}) {
			t.Errorf("VF %d's BAR still decodes", i)
		}
	}
	r.mu.Lock()
	released := fmt.Sprint(r.released)
	r.mu.Unlock()
	if released != "[0 1 2]" {
		t.Errorf("released VFs %s, want [0 1 2]", released)
	}
	// Enabled again, with another count, the VFs come back anew.
	r.enable(4)
	if got := len(r.s.VFs()); got != 4 {
		t.Errorf("%d live VFs after re-enabling 4", got)
	}
	if id := r.ecam32(pci.BDF{Device: 3, Function: 4}, 8) >> 8; id != 0x010000 {
		t.Errorf("VF 3 not present after re-enabling: class %#x", id)
	}
}

// TestSRIOVRefusals: NumVFs above TotalVFs enables nothing, a VF whose BAR
// differs from the capability's is left out, and both are reported.
func TestSRIOVRefusals(t *testing.T) {
	r := newSRIOVRig(t)
	r.enable(5)
	if n := len(r.s.VFs()); n != 0 {
		t.Errorf("%d VFs made with NumVFs 5 > TotalVFs 4", n)
	}
	r.ecamWrite(pfAddr, r.off+0x08, 2, 0)
	r.mu.Lock()
	r.badSize = 1
	r.mu.Unlock()
	r.enable(2)
	vfs := r.s.VFs()
	if len(vfs) != 2 || vfs[0] == nil || vfs[1] != nil {
		t.Errorf("VFs %v: want VF 0 only (VF 1 has a BAR of the wrong size)", vfs)
	}
	if id := r.ecam32(pci.BDF{Device: 3, Function: 2}, 8); id != 0xffffffff {
		t.Errorf("the refused VF answers: %#x", id)
	}
	r.mu.Lock()
	errs := strings.Join(r.errs, "\n")
	released := fmt.Sprint(r.released)
	r.mu.Unlock()
	if !strings.Contains(errs, "NumVFs 5 above TotalVFs 4") || !strings.Contains(errs, "VF 1's BAR0") {
		t.Errorf("reports: %s", errs)
	}
	if released != "[1]" {
		t.Errorf("released %q, want the refused VF 1", released)
	}
}

// TestSRIOVVFFLR: Initiate Function Level Reset on one VF resets it alone
// and reads back as zero; the VF's Express capability offers FLR.
func TestSRIOVVFFLR(t *testing.T) {
	r := newSRIOVRig(t)
	r.enable(2)
	a := pci.BDF{Device: 3, Function: 2}
	cap := r.cf8.FindCapability(a, pci.CapExpress, 0)
	if cap == 0 {
		t.Fatal("the VF has no Express capability")
	}
	if devCap := r.ecam32(a, cap+4); devCap&(1<<28) == 0 {
		t.Errorf("Device Capabilities %#x: no FLR", devCap)
	}
	ctl := r.ecam32(a, cap+8) & 0xffff
	r.ecamWrite(a, cap+8, 2, ctl|1<<15)
	r.mu.Lock()
	vf0, vf1 := r.made[0].flr, r.made[1].flr
	r.mu.Unlock()
	if vf1 != 1 || vf0 != 0 {
		t.Errorf("FLRs: VF 0 %d, VF 1 %d; want only VF 1's", vf0, vf1)
	}
	if v := r.ecam32(a, cap+8) & 0xffff; v&(1<<15) != 0 {
		t.Errorf("Device Control reads %#x: the FLR bit stuck", v)
	}
}

// TestSRIOVBadConfig: the capability's own checks.
func TestSRIOVBadConfig(t *testing.T) {
	nv := func(int) (pci.Function, error) { return nil, errors.New("no") }
	for name, cfg := range map[string]pci.SRIOVConfig{
		"no VFs":        {TotalVFs: 0, NewVF: nv},
		"eight VFs":     {TotalVFs: 8, NewVF: nv},
		"no NewVF":      {TotalVFs: 1},
		"small VF BAR":  {TotalVFs: 1, NewVF: nv, VFBARs: [6]pci.BAR{{Kind: pci.BARMem32, Size: 0x800}}},
		"I/O VF BAR":    {TotalVFs: 1, NewVF: nv, VFBARs: [6]pci.BAR{{Kind: pci.BARIO, Size: 0x1000}}},
		"64-bit at end": {TotalVFs: 1, NewVF: nv, VFBARs: [6]pci.BAR{5: {Kind: pci.BARMem64, Size: 0x1000}}},
	} {
		c := pci.NewConfig(pci.Header{VendorID: 1, Express: true})
		if _, err := pci.AddSRIOV(c, cfg); !errors.Is(err, pci.ErrBadSRIOV) {
			t.Errorf("%s: %v", name, err)
		}
	}
	conv := pci.NewConfig(pci.Header{VendorID: 1})
	if _, err := pci.AddSRIOV(conv, pci.SRIOVConfig{TotalVFs: 1, NewVF: nv}); err == nil {
		t.Error("SR-IOV on a conventional PCI function")
	}
}

// FuzzSRIOV drives random configuration writes at the SR-IOV capability,
// the PF's command register and the VFs' configuration spaces, and
// checks after each that every VF made is live or released (none leaks),
// that no more than TotalVFs are live, and that the Root's registrations
// of each live VF are what it decodes.
func FuzzSRIOV(f *testing.F) {
	f.Add([]byte{0x10, 0x03, 0x00, 0x08, 0x09, 0x00, 0x01, 0x34, 0x06, 0x00})
	f.Add([]byte{0x10, 0x07, 0x00, 0x08, 0x01, 0x00, 0x24, 0xff, 0xff, 0x08, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := newSRIOVRig(t)
		for len(ops) >= 4 {
			op, off, v := ops[0], int(ops[1]), uint32(binary.LittleEndian.Uint16(ops[2:4]))
			ops = ops[4:]
			switch op % 4 {
			case 0, 1: // the capability (control, NumVFs, VF BARs ...)
				r.ecamWrite(pfAddr, r.off+off%0x40&^1, 2, v)
			case 2: // a VF's configuration space, FLR included
				a := pci.BDF{Device: 3, Function: uint8(1 + int(op>>2)%7)}
				r.ecamWrite(a, off&^1, 2, v)
			case 3: // the PF's own header
				r.ecamWrite(pfAddr, off%0x40&^1, 2, v)
			}
			live := r.s.VFs()
			if len(live) > 4 {
				t.Fatalf("%d live VFs, TotalVFs is 4", len(live))
			}
			r.mu.Lock()
			made, released := r.count, len(r.released)
			r.mu.Unlock()
			n := 0
			for _, vf := range live {
				if vf != nil {
					n++
					for _, m := range r.root.Mapped(vf) {
						if !containsRegion(vf.Regions(), m) {
							t.Fatalf("registered %+v not decoded by the VF", m)
						}
					}
				}
			}
			if made != n+released {
				t.Fatalf("made %d VFs, %d live, %d released", made, n, released)
			}
		}
	})
}

func containsRegion(rs []pci.Region, x pci.Region) bool {
	for _, r := range rs {
		if r.BAR == x.BAR && r.Addr == x.Addr && r.Size == x.Size {
			return true
		}
	}
	return false
}
