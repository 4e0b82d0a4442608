package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// ExtCapSRIOV is the extended capability ID of Single Root I/O
// Virtualization (PCIe base specification, chapter 9).
const ExtCapSRIOV = 0x0010

// MaxVFs is how many virtual functions a physical function may have here:
// they take functions 1-7 of the physical function's device (First VF
// Offset 1, VF Stride 1), since the Root offers no ARI.
const MaxVFs = 7

// Offsets within the SR-IOV capability.
const (
	sriovCaps       = 0x04
	sriovControl    = 0x08
	sriovStatus     = 0x0a
	sriovInitialVFs = 0x0c
	sriovTotalVFs   = 0x0e
	sriovNumVFs     = 0x10
	sriovFuncLink   = 0x12
	sriovVFOffset   = 0x14
	sriovVFStride   = 0x16
	sriovVFDeviceID = 0x1a
	sriovPageSizes  = 0x1c
	sriovPageSize   = 0x20
	sriovVFBAR0     = 0x24
	sriovLength     = 0x40
)

// SR-IOV Control bits.
const (
	SRIOVEnable = 1 << 0 // VF Enable
	SRIOVMSE    = 1 << 3 // VF Memory Space Enable
)

// SRIOVConfig describes a physical function's SR-IOV capability.
type SRIOVConfig struct {
	// TotalVFs is how many VFs the guest may enable, 1..MaxVFs.
	TotalVFs int
	// VFDeviceID is the VFs' device ID (their vendor ID is the PF's).
	VFDeviceID uint16
	// VFBARs are each VF's memory BARs (kind, size, prefetchable); VF i's
	// BAR n sits at the PF's VF BAR n plus i times its size. Device is
	// unused here: each VF's own Config.SetBAR brings its handler.
	VFBARs [NumBARs]BAR
	// NewVF makes VF i (from 0) when the guest sets VF Enable. Its
	// configuration space must come from SRIOV.NewVFConfig(i, ...).
	NewVF func(i int) (Function, error)
	// ReleaseVF stops VF i once the guest cleared VF Enable and the Root
	// unplugged it.
	ReleaseVF func(i int, f Function)
	// OnError, if set, hears of a VF that could not be made; the guest
	// then finds fewer VFs than it enabled, as after a failed VF on real
	// hardware.
	OnError func(error)
}

// SRIOV is a physical function's SR-IOV capability and the virtual
// functions the guest enabled through it. A Root that is given the PF
// plugs the VFs in at their routing IDs after every configuration write
// to the PF, and unplugs them when VF Enable is cleared.
type SRIOV struct {
	pf  *Config
	off int
	cfg SRIOVConfig

	mu      sync.Mutex
	vfs     []Function // live VFs by index; nil entries were not made
	release []Function // VFs to release once the Root unplugged them
}

// Errors of SR-IOV setup.
var ErrBadSRIOV = errors.New("pci: bad SR-IOV configuration")

// AddSRIOV adds the SR-IOV capability to c, a function created with
// Header.Express, and returns it.
func AddSRIOV(c *Config, cfg SRIOVConfig) (*SRIOV, error) {
	if cfg.TotalVFs < 1 || cfg.TotalVFs > MaxVFs {
		return nil, fmt.Errorf("%w: %d VFs (1 to %d)", ErrBadSRIOV, cfg.TotalVFs, MaxVFs)
	}
	if cfg.NewVF == nil {
		return nil, fmt.Errorf("%w: no NewVF", ErrBadSRIOV)
	}
	le := binary.LittleEndian
	body := make([]byte, sriovLength-4)
	wmask := make([]byte, len(body))
	put16 := func(off int, v uint16) { le.PutUint16(body[off-4:], v) }
	put32 := func(off int, v uint32) { le.PutUint32(body[off-4:], v) }
	put16(sriovInitialVFs, uint16(cfg.TotalVFs))
	put16(sriovTotalVFs, uint16(cfg.TotalVFs))
	put16(sriovVFOffset, 1)
	put16(sriovVFStride, 1)
	put16(sriovVFDeviceID, cfg.VFDeviceID)
	put32(sriovPageSizes, 1) // 4 KiB pages only
	put32(sriovPageSize, 1)
	le.PutUint16(wmask[sriovControl-4:], SRIOVEnable|SRIOVMSE)
	le.PutUint16(wmask[sriovNumVFs-4:], 0xffff)
	for i := 0; i < NumBARs; i++ {
		b := cfg.VFBARs[i]
		off := sriovVFBAR0 + 4*i - 4
		switch b.Kind {
		case BARUnused:
			continue
		case BARMem32, BARMem64:
		default:
			return nil, fmt.Errorf("%w: VF BAR%d kind %d (memory only)", ErrBadSRIOV, i, b.Kind)
		}
		if b.Size < 4096 || b.Size&(b.Size-1) != 0 || b.Kind == BARMem32 && b.Size > 1<<31 {
			return nil, fmt.Errorf("%w: VF BAR%d size %#x (a power of two of at least a page)", ErrBadSRIOV, i, b.Size)
		}
		low := uint32(0)
		if b.Prefetchable {
			low |= 1 << 3
		}
		mask := ^(b.Size - 1)
		if b.Kind == BARMem64 {
			if i == NumBARs-1 || cfg.VFBARs[i+1].Kind != BARUnused {
				return nil, fmt.Errorf("%w: 64-bit VF BAR%d needs VF BAR%d free", ErrBadSRIOV, i, i+1)
			}
			low |= 2 << 1
			le.PutUint32(wmask[off+4:], uint32(mask>>32))
		}
		le.PutUint32(body[off:], low)
		le.PutUint32(wmask[off:], uint32(mask)&^0xf)
		if b.Kind == BARMem64 {
			i++
		}
	}
	s := &SRIOV{pf: c, cfg: cfg}
	off, err := c.AddExtendedCapability(ExtCapSRIOV, 1, body, wmask, CapabilityHooks{Write: s.written})
	if err != nil {
		return nil, err
	}
	s.off = off
	c.mu.Lock()
	c.sriov = s
	c.mu.Unlock()
	return s, nil
}

// Offset is where the capability sits in the PF's configuration space.
func (s *SRIOV) Offset() int { return s.off }

func (s *SRIOV) reg16(off int) uint16 {
	return binary.LittleEndian.Uint16(s.pf.Bytes(s.off+off, 2))
}

// written is the capability's write hook: VF Enable turning on makes the
// VFs, turning off retires them; NumVFs is read-only while VFs are
// enabled (the spec leaves a change then undefined: it is undone).
func (s *SRIOV) written(int, []byte) {
	ctrl := s.reg16(sriovControl)
	s.mu.Lock()
	defer s.mu.Unlock()
	on := ctrl&SRIOVEnable != 0
	switch {
	case on && s.vfs == nil:
		n := int(s.reg16(sriovNumVFs))
		if n > s.cfg.TotalVFs {
			s.report(fmt.Errorf("pci: SR-IOV enabled with NumVFs %d above TotalVFs %d: no VFs", n, s.cfg.TotalVFs))
			n = 0
		}
		s.vfs = make([]Function, n)
		for i := range n {
			f, err := s.cfg.NewVF(i)
			if err != nil {
				s.report(fmt.Errorf("pci: making VF %d: %w", i, err))
				continue
			}
			if err := s.checkVF(i, f); err != nil {
				s.report(err)
				if s.cfg.ReleaseVF != nil {
					s.cfg.ReleaseVF(i, f)
				}
				continue
			}
			s.vfs[i] = f
		}
	case on:
		if n := len(s.vfs); int(s.reg16(sriovNumVFs)) != n {
			var b [2]byte
			binary.LittleEndian.PutUint16(b[:], uint16(n))
			s.pf.SetBytes(s.off+sriovNumVFs, b[:])
		}
	case !on && s.vfs != nil:
		for _, f := range s.vfs {
			if f != nil {
				s.release = append(s.release, f)
			}
		}
		s.vfs = nil
	}
}

func (s *SRIOV) report(err error) {
	if s.cfg.OnError != nil {
		s.cfg.OnError(err)
	}
}

// checkVF makes sure f was built as VF i of s with the BARs the
// capability announces.
func (s *SRIOV) checkVF(i int, f Function) error {
	cfg := configOf(f)
	if cfg == nil {
		return fmt.Errorf("pci: VF %d has no configuration space from NewVFConfig", i)
	}
	cfg.mu.Lock()
	defer cfg.mu.Unlock()
	if cfg.vf == nil || cfg.vf.pf != s || cfg.vf.index != i {
		return fmt.Errorf("pci: VF %d's configuration space was made for another VF", i)
	}
	for n, b := range cfg.bars {
		want := s.cfg.VFBARs[n]
		if b.Kind == barHigh {
			continue
		}
		if b.Kind != want.Kind || b.Kind != BARUnused && b.Size != want.Size {
			return fmt.Errorf("pci: VF %d's BAR%d (kind %d, %#x bytes) is not the capability's (kind %d, %#x bytes)", i, n, b.Kind, b.Size, want.Kind, want.Size)
		}
	}
	return nil
}

// vfConfig lets a Function that embeds *Config be checked as a VF.
func (c *Config) vfConfig() *Config { return c }

// configOf is the Config a Function embeds, nil for one that has none.
func configOf(f Function) *Config {
	if c, ok := f.(interface{ vfConfig() *Config }); ok {
		return c.vfConfig()
	}
	return nil
}

// sriovOf is f's SR-IOV capability, nil when f is no physical function.
func sriovOf(f Function) *SRIOV {
	if p, ok := f.(interface{ SRIOV() *SRIOV }); ok {
		return p.SRIOV()
	}
	return nil
}

// VFs returns the live virtual functions by index (nil where one could
// not be made), and takes the list of retired ones for the caller to
// release after unplugging them: see Root.
func (s *SRIOV) VFs() []Function {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Function(nil), s.vfs...)
}

// retired hands over the VFs that VF Enable's clearing retired.
func (s *SRIOV) retired() []Function {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.release
	s.release = nil
	return r
}

// releaseRetired calls ReleaseVF for each retired VF, once the Root has
// unplugged them.
func (s *SRIOV) releaseRetired(fs []Function) {
	for _, f := range fs {
		if s.cfg.ReleaseVF == nil {
			continue
		}
		i := -1
		if c := configOf(f); c != nil && c.vf != nil {
			i = c.vf.index
		}
		s.cfg.ReleaseVF(i, f)
	}
}

// vfPlace marks a Config as VF index of pf.
type vfPlace struct {
	pf    *SRIOV
	index int
}

// NewVFConfig returns the configuration space of VF i: h's identity, but
// vendor and device ID read as all ones (software takes them from the PF
// and its capability), the memory space bit of the command register is
// read-only zero (VF MSE in the PF decides), and BAR registers read as
// zero: a BAR declared with SetBAR decodes where the PF's VF BAR puts it.
func (s *SRIOV) NewVFConfig(i int, h Header) *Config {
	h.VendorID, h.DeviceID = 0xffff, 0xffff
	h.MultiFunction = false
	h.InterruptPin = 0 // VFs have no INTx
	c := NewConfig(h)
	c.vf = &vfPlace{pf: s, index: i}
	binary.LittleEndian.PutUint16(c.wmask[RegCommand:], CommandBusMaster|CommandParity|CommandSERR)
	return c
}

// vfBARBase returns the PF's VF BAR n as programmed, and whether VFs
// decode memory now (VF Enable and VF MSE).
func (s *SRIOV) vfBARBase(n int) (uint64, bool) {
	b := s.pf.Bytes(s.off+sriovControl, 2)
	on := binary.LittleEndian.Uint16(b)&(SRIOVEnable|SRIOVMSE) == SRIOVEnable|SRIOVMSE
	regs := s.pf.Bytes(s.off+sriovVFBAR0+4*n, 8)
	v := uint64(binary.LittleEndian.Uint32(regs)) &^ 0xf
	if s.cfg.VFBARs[n].Kind == BARMem64 {
		v |= uint64(binary.LittleEndian.Uint32(regs[4:])) << 32
	}
	return v, on
}

// vfRegionsLocked is Regions for a VF's configuration space c (c.mu
// held): its BARs where the PF's VF BARs place VF c.vf.index.
func (c *Config) vfRegionsLocked() []Region {
	var rs []Region
	for n, b := range c.bars {
		if b.Kind != BARMem32 && b.Kind != BARMem64 {
			continue
		}
		base, on := c.vf.pf.vfBARBase(n)
		addr := base + uint64(c.vf.index)*b.Size
		if !on || base == 0 || addr < base || addr+b.Size < addr {
			continue
		}
		rs = append(rs, Region{BAR: n, Space: SpaceMemory, Addr: addr, Size: b.Size, Device: b.Device})
	}
	return rs
}

// SRIOV returns the function's SR-IOV capability, nil without one.
func (c *Config) SRIOV() *SRIOV {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sriov
}
