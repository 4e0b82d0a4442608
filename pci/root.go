package pci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/viovmm/vio/bus"
)

// Window is a range of guest addresses BARs are allocated from.
type Window struct {
	Base, Size uint64
}

func (w Window) end() uint64 { return w.Base + w.Size }

// RootConfig configures a Root.
type RootConfig struct {
	// MMIO and PIO are the buses BAR ranges are registered on.
	MMIO, PIO *bus.Bus
	// MMIO32 is the window below 4 GiB for 32-bit memory BARs (and for
	// 64-bit ones when MMIO64 is empty).
	MMIO32 Window
	// MMIO64 is an optional window above RAM for 64-bit memory BARs.
	MMIO64 Window
	// PIOWindow is the port range I/O BARs are allocated from.
	PIOWindow Window
}

// Errors returned by Root.
var (
	ErrSlotInUse    = errors.New("pci: slot already in use")
	ErrBadAddress   = errors.New("pci: bad device/function number")
	ErrWindowFull   = errors.New("pci: BAR window exhausted")
	ErrNoFunction0  = errors.New("pci: function 0 must be added before functions 1-7")
	ErrWindowConfig = errors.New("pci: bad window")
	ErrNoFunction   = errors.New("pci: no function there")
)

// ECAMSize is the size of the ECAM window for bus 0, which is all a Root
// serves: 32 devices × 8 functions × 4 KiB.
const ECAMSize = 1 << 20

// Config access ports of the legacy mechanism #1.
const (
	ConfigAddressPort = 0xcf8
	ConfigPortsSize   = 8 // 0xcf8..0xcff
)

// Root is PCI bus 0 of a host bridge: up to 32 devices of up to 8
// functions, reachable through the CF8/CFC ports (ConfigPorts) and ECAM
// (ECAM). The host bridge itself is function 00.0.
//
// The Root keeps the buses' BAR registrations in sync with configuration
// space: after every configuration write it asks the written function for
// its decoded Regions and registers or unregisters ranges to match, calling
// the function's BARMapped hook. A range that overlaps something already on
// the bus is left unmapped (the guest programmed a conflict; real hardware
// would decode both and the result would be undefined).
type Root struct {
	mmio, pio *bus.Bus

	mu      sync.Mutex // serializes configuration accesses and remapping
	fns     [32][8]Function
	mapped  map[Function][]Region
	allocs  map[Function][]allocation // what assignBARs handed out, freed by Remove
	free    []allocation              // ranges of removed functions, for reuse
	vfSlots map[*SRIOV][]BDF          // where each PF's live VFs are plugged in
	cf8     uint32
	next32  uint64
	next64  uint64
	nextPIO uint64
	cfg     RootConfig
}

// NewRoot returns bus 0 with the host bridge at 00.0.
func NewRoot(cfg RootConfig) (*Root, error) {
	if cfg.MMIO == nil || cfg.PIO == nil {
		return nil, fmt.Errorf("%w: MMIO and PIO buses are required", ErrWindowConfig)
	}
	for _, w := range []Window{cfg.MMIO32, cfg.MMIO64, cfg.PIOWindow} {
		if w.Base+w.Size < w.Base {
			return nil, fmt.Errorf("%w: %#x+%#x wraps", ErrWindowConfig, w.Base, w.Size)
		}
	}
	if cfg.MMIO32.end() > 1<<32 || cfg.PIOWindow.end() > 1<<16 {
		return nil, fmt.Errorf("%w: 32-bit or I/O window too high", ErrWindowConfig)
	}
	r := &Root{
		mmio: cfg.MMIO, pio: cfg.PIO, cfg: cfg,
		mapped:  make(map[Function][]Region),
		allocs:  make(map[Function][]allocation),
		vfSlots: make(map[*SRIOV][]BDF),
		next32:  cfg.MMIO32.Base,
		next64:  cfg.MMIO64.Base,
		nextPIO: cfg.PIOWindow.Base,
	}
	if err := r.Add(BDF{}, NewHostBridge()); err != nil {
		return nil, err
	}
	return r, nil
}

// Add plugs f in at addr (bus number ignored: a Root is bus 0) and
// assigns its BARs the way firmware would: each BAR is sized with the
// all-ones probe through f's own configuration space and given a naturally
// aligned address from the matching window. Decoding stays disabled; the
// guest OS enables it (Linux does in pci_enable_device).
func (r *Root) Add(addr BDF, f Function) error {
	if !addr.valid() {
		return fmt.Errorf("%w: %s", ErrBadAddress, addr)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fns[addr.Device][addr.Function] != nil {
		return fmt.Errorf("%w: %s", ErrSlotInUse, addr)
	}
	if addr.Function != 0 && r.fns[addr.Device][0] == nil {
		return fmt.Errorf("%w: %s", ErrNoFunction0, addr)
	}
	if err := r.assignBARs(f); err != nil {
		r.free = append(r.free, r.allocs[f]...)
		delete(r.allocs, f)
		return fmt.Errorf("pci: %s: %w", addr, err)
	}
	r.fns[addr.Device][addr.Function] = f
	r.remapLocked(f)
	return nil
}

func read32(f Function, off int) uint32 {
	var b [4]byte
	f.ReadConfig(off, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func write32(f Function, off int, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	f.WriteConfig(off, b[:])
}

// assignBARs sizes and places f's BARs, largest first within each kind
// would pack better, but BARs are few and windows large: first fit in
// register order keeps addresses predictable.
func (r *Root) assignBARs(f Function) error {
	for i := 0; i < NumBARs; i++ {
		is64, err := r.placeBAR(f, RegBAR0+4*i, i == NumBARs-1, 1, true)
		if err != nil {
			return fmt.Errorf("BAR%d: %w", i, err)
		}
		if is64 {
			i++
		}
	}
	return r.assignVFBARs(f)
}

// assignVFBARs places a physical function's VF BARs, as firmware does:
// each is sized with the all-ones probe at its register in the SR-IOV
// capability and given room for TotalVFs VFs, aligned to one VF's size.
func (r *Root) assignVFBARs(f Function) error {
	s := sriovOf(f)
	if s == nil {
		return nil
	}
	cap := s.Offset()
	total := uint64(read32(f, cap+sriovInitialVFs) >> 16) // TotalVFs: the upper half
	for i := 0; i < NumBARs; i++ {
		is64, err := r.placeBAR(f, cap+sriovVFBAR0+4*i, i == NumBARs-1, total, false)
		if err != nil {
			return fmt.Errorf("VF BAR%d: %w", i, err)
		}
		if is64 {
			i++
		}
	}
	return nil
}

// placeBAR sizes the BAR register at off with the all-ones probe and
// gives it room for count copies (VFs), naturally aligned, from the
// matching window; I/O BARs are placed only when io is set. It reports a
// 64-bit BAR, whose upper half is the next register; last says there is
// none.
func (r *Root) placeBAR(f Function, off int, last bool, count uint64, io bool) (is64 bool, err error) {
	orig := read32(f, off)
	write32(f, off, 0xffffffff)
	probe := read32(f, off)
	write32(f, off, orig)
	if probe == 0 {
		return false, nil
	}
	if probe&1 == 1 {
		if !io {
			return false, fmt.Errorf("%w: an I/O BAR where only memory is allowed", ErrBadBAR)
		}
		size := uint64(^(probe&^3)&0xffff) + 1
		base, err := r.allocate(f, winPIO, &r.nextPIO, r.cfg.PIOWindow, size)
		if err != nil {
			return false, err
		}
		write32(f, off, uint32(base))
		return false, nil
	}
	is64 = probe&0x6 == 0x4
	mask := uint64(probe&^0xf) | 0xffffffff<<32
	if is64 {
		if last {
			return false, fmt.Errorf("%w: a 64-bit BAR with no upper half", ErrBadBAR)
		}
		origHi := read32(f, off+4)
		write32(f, off+4, 0xffffffff)
		mask = uint64(probe&^0xf) | uint64(read32(f, off+4))<<32
		write32(f, off+4, origHi)
	}
	size := ^mask + 1
	if size == 0 || size&(size-1) != 0 {
		return false, fmt.Errorf("%w: it probes as %#x", ErrBadBAR, mask)
	}
	// A power-of-two total keeps the natural alignment the allocator
	// gives, which is one copy's alignment too.
	all := size
	for all < size*count {
		all <<= 1
	}
	var base uint64
	if is64 && r.cfg.MMIO64.Size != 0 {
		base, err = r.allocate(f, win64, &r.next64, r.cfg.MMIO64, all)
	} else {
		base, err = r.allocate(f, win32, &r.next32, r.cfg.MMIO32, all)
	}
	if err != nil {
		return false, err
	}
	write32(f, off, uint32(base)|probe&0xf)
	if is64 {
		write32(f, off+4, uint32(base>>32))
	}
	return is64, nil
}

// allocation is a BAR range handed out from one of the Root's windows.
type allocation struct {
	window     window
	base, size uint64
}

type window uint8

const (
	winPIO window = iota
	win32
	win64
)

// allocate hands f a naturally aligned range of size bytes: a range of
// exactly that size a removed function left, or a new one from w.
func (r *Root) allocate(f Function, win window, next *uint64, w Window, size uint64) (uint64, error) {
	for i, a := range r.free {
		if a.window == win && a.size == size && a.base%size == 0 {
			r.free = append(r.free[:i], r.free[i+1:]...)
			r.allocs[f] = append(r.allocs[f], a)
			return a.base, nil
		}
	}
	base, err := alloc(next, w, size)
	if err != nil {
		return 0, err
	}
	r.allocs[f] = append(r.allocs[f], allocation{win, base, size})
	return base, nil
}

// Remove unplugs the function at addr: its BAR ranges are unregistered
// from the buses (with BARMapped(r, false) for each), its slot is free
// for Add, and the BAR space it was given goes back for reuse. Function
// 0 of a device goes last: removing it while functions 1-7 remain is an
// error. The caller stops the device itself; the guest must have let it
// go first (ACPI eject), or it keeps using addresses that now decode to
// nothing.
func (r *Root) Remove(addr BDF) error {
	if !addr.valid() || addr.Bus != 0 || addr == (BDF{}) {
		return fmt.Errorf("%w: %s cannot be removed", ErrBadAddress, addr)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.fns[addr.Device][addr.Function]
	if f == nil {
		return fmt.Errorf("%w: nothing at %s", ErrNoFunction, addr)
	}
	// A physical function's VFs are part of it: they go with it.
	if s := sriovOf(f); s != nil {
		for _, at := range r.vfSlots[s] {
			if vf := r.fns[at.Device][at.Function]; vf != nil {
				r.unmapStaleLocked(vf, nil)
				r.fns[at.Device][at.Function] = nil
			}
		}
		delete(r.vfSlots, s)
	}
	if addr.Function == 0 {
		for fn := 1; fn < 8; fn++ {
			if r.fns[addr.Device][fn] != nil {
				return fmt.Errorf("%w: %s still has function %d", ErrSlotInUse, addr, fn)
			}
		}
	}
	r.unmapStaleLocked(f, nil)
	r.fns[addr.Device][addr.Function] = nil
	r.free = append(r.free, r.allocs[f]...)
	delete(r.allocs, f)
	return nil
}

// alloc hands out a naturally aligned range of size bytes from w.
func alloc(next *uint64, w Window, size uint64) (uint64, error) {
	base := (*next + size - 1) &^ (size - 1)
	if base < *next || base+size < base || base+size > w.end() || w.Size == 0 {
		return 0, fmt.Errorf("%w: %#x bytes in %#x+%#x", ErrWindowFull, size, w.Base, w.Size)
	}
	*next = base + size
	return base, nil
}

func (r *Root) lookup(a BDF) Function {
	if a.Bus != 0 || !a.valid() {
		return nil
	}
	return r.fns[a.Device][a.Function]
}

// ReadConfig reads the configuration space of the function at a; absent
// functions read as all ones, which is how a guest detects them.
func (r *Root) ReadConfig(a BDF, offset int, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.lookup(a)
	if f == nil || offset < 0 || offset+len(data) > ExtendedConfigSize {
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	f.ReadConfig(offset, data)
}

// WriteConfig writes the configuration space of the function at a and
// re-syncs its BAR mappings, and for a physical function its virtual
// functions. Writes to absent functions are dropped.
func (r *Root) WriteConfig(a BDF, offset int, data []byte) {
	r.mu.Lock()
	f := r.lookup(a)
	if f == nil || offset < 0 || offset+len(data) > ExtendedConfigSize {
		r.mu.Unlock()
		return
	}
	f.WriteConfig(offset, data)
	r.remapLocked(f)
	release := r.syncVFsLocked(a, f)
	r.mu.Unlock()
	// Released outside the lock: stopping a device may wait for its
	// goroutines, which must not wait for configuration accesses.
	release()
}

// syncVFsLocked plugs in the live VFs of the physical function f at a
// (VF i at routing ID a+1+i: First VF Offset and VF Stride are 1), unplugs
// those the guest disabled, and re-syncs the VFs' BAR mappings, which the
// PF's VF BARs and VF MSE decide. It returns the release of the VFs it
// unplugged, to run once the lock is dropped.
func (r *Root) syncVFsLocked(a BDF, f Function) (release func()) {
	s := sriovOf(f)
	if s == nil {
		return func() {}
	}
	vfs := s.VFs()
	want := make(map[BDF]Function, len(vfs))
	rid := int(a.Device)<<3 | int(a.Function)
	for i, vf := range vfs {
		v := rid + 1 + i
		if vf == nil || v >= 32*8 {
			continue
		}
		want[BDF{Device: uint8(v >> 3), Function: uint8(v & 7)}] = vf
	}
	for _, at := range r.vfSlots[s] {
		if cur := r.fns[at.Device][at.Function]; cur != nil && want[at] != cur {
			r.unmapStaleLocked(cur, nil)
			r.fns[at.Device][at.Function] = nil
		}
	}
	var slots []BDF
	for i := range vfs {
		v := rid + 1 + i
		at := BDF{Device: uint8(v >> 3), Function: uint8(v & 7)}
		vf, ok := want[at]
		if !ok {
			continue
		}
		if r.fns[at.Device][at.Function] == nil {
			r.fns[at.Device][at.Function] = vf
		}
		if r.fns[at.Device][at.Function] != vf {
			continue // another function holds the slot: this VF stays out
		}
		slots = append(slots, at)
		r.remapLocked(vf)
	}
	if len(slots) == 0 {
		delete(r.vfSlots, s)
	} else {
		r.vfSlots[s] = slots
	}
	retired := s.retired()
	return func() { s.releaseRetired(retired) }
}

// remapLocked makes the bus registrations of f match f.Regions().
func (r *Root) remapLocked(f Function) {
	want := f.Regions()
	r.unmapStaleLocked(f, want)
	r.mapWantedLocked(f, want)
}

// unmapStaleLocked unregisters f's ranges that are not in want.
func (r *Root) unmapStaleLocked(f Function, want []Region) {
	have := r.mapped[f]
	keep := have[:0:0]
	for _, h := range have {
		if containsRegion(want, h) {
			keep = append(keep, h)
			continue
		}
		r.busFor(h.Space).Unregister(h.Addr)
		f.BARMapped(h, false)
	}
	r.setMappedLocked(f, keep)
}

// mapWantedLocked registers f's ranges in want that are not mapped yet.
func (r *Root) mapWantedLocked(f Function, want []Region) {
	keep := r.mapped[f]
	for _, w := range want {
		if containsRegion(keep, w) {
			continue
		}
		if w.Device == nil {
			continue
		}
		if err := r.busFor(w.Space).Register(w.Addr, w.Size, w.Device); err != nil {
			continue // conflict: leave the BAR unmapped (see Root's doc)
		}
		keep = append(keep, w)
		f.BARMapped(w, true)
	}
	r.setMappedLocked(f, keep)
}

func (r *Root) setMappedLocked(f Function, rs []Region) {
	if len(rs) == 0 {
		delete(r.mapped, f)
	} else {
		r.mapped[f] = rs
	}
}

// Resync makes every function's bus registrations match its Regions, as
// after a configuration write to each. Call it after restoring functions'
// configuration spaces (Config.RestoreState), which bypasses the Root.
// Stale ranges of all functions are unregistered before any new one is
// registered, so BARs that swapped places between the fresh machine's
// assignment and the restored one do not conflict.
func (r *Root) Resync() {
	r.mu.Lock()
	defer r.mu.Unlock()
	var fns []Function
	var wants [][]Region
	for d := range r.fns {
		for _, f := range r.fns[d] {
			if f != nil {
				fns = append(fns, f)
				wants = append(wants, f.Regions())
			}
		}
	}
	for i, f := range fns {
		r.unmapStaleLocked(f, wants[i])
	}
	for i, f := range fns {
		r.mapWantedLocked(f, wants[i])
	}
}

func containsRegion(rs []Region, x Region) bool {
	for _, r := range rs {
		if r.BAR == x.BAR && r.Space == x.Space && r.Addr == x.Addr && r.Size == x.Size {
			return true
		}
	}
	return false
}

func (r *Root) busFor(s Space) *bus.Bus {
	if s == SpaceIO {
		return r.pio
	}
	return r.mmio
}

// Mapped returns the ranges currently registered for f; for tests and the
// VMM's introspection.
func (r *Root) Mapped(f Function) []Region {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Region(nil), r.mapped[f]...)
}

// ConfigPorts returns the bus.Device for ports 0xCF8–0xCFF (register it at
// ConfigAddressPort with size ConfigPortsSize on the PIO bus).
func (r *Root) ConfigPorts() bus.Device { return (*configPorts)(r) }

// ECAM returns the bus.Device for the memory-mapped configuration window of
// bus 0 (register it with size ECAMSize; ACPI MCFG describes its base).
func (r *Root) ECAM() bus.Device { return (*ecam)(r) }

type configPorts Root

// CONFIG_ADDRESS: bit 31 enable, 23:16 bus, 15:11 device, 10:8 function,
// 7:2 register. Only 4-byte accesses at 0xCF8 reach it; narrower ones are
// other chipset registers on real hardware (0xCF9 is the reset control
// register) and are ignored here.
func (p *configPorts) Read(offset uint64, data []byte) {
	r := (*Root)(p)
	switch {
	case offset == 0 && len(data) == 4:
		r.mu.Lock()
		binary.LittleEndian.PutUint32(data, r.cf8)
		r.mu.Unlock()
	case offset >= 4 && offset+uint64(len(data)) <= 8:
		a, reg, ok := p.target()
		if !ok {
			fillOnes(data)
			return
		}
		r.ReadConfig(a, reg+int(offset-4), data)
	default:
		fillOnes(data)
	}
}

func (p *configPorts) Write(offset uint64, data []byte) {
	r := (*Root)(p)
	switch {
	case offset == 0 && len(data) == 4:
		r.mu.Lock()
		r.cf8 = binary.LittleEndian.Uint32(data) & 0x80fffffc
		r.mu.Unlock()
	case offset >= 4 && offset+uint64(len(data)) <= 8:
		a, reg, ok := p.target()
		if !ok {
			return
		}
		r.WriteConfig(a, reg+int(offset-4), data)
	}
}

func (p *configPorts) target() (BDF, int, bool) {
	r := (*Root)(p)
	r.mu.Lock()
	v := r.cf8
	r.mu.Unlock()
	if v&(1<<31) == 0 {
		return BDF{}, 0, false
	}
	a := BDF{Bus: uint8(v >> 16), Device: uint8(v>>11) & 31, Function: uint8(v>>8) & 7}
	return a, int(v & 0xfc), true
}

type ecam Root

func (e *ecam) split(offset uint64, n int) (BDF, int, bool) {
	if offset >= ECAMSize {
		return BDF{}, 0, false
	}
	reg := int(offset & 0xfff)
	if reg+n > ExtendedConfigSize {
		return BDF{}, 0, false
	}
	return BDF{Bus: 0, Device: uint8(offset>>15) & 31, Function: uint8(offset>>12) & 7}, reg, true
}

func (e *ecam) Read(offset uint64, data []byte) {
	a, reg, ok := e.split(offset, len(data))
	if !ok {
		fillOnes(data)
		return
	}
	(*Root)(e).ReadConfig(a, reg, data)
}

func (e *ecam) Write(offset uint64, data []byte) {
	a, reg, ok := e.split(offset, len(data))
	if !ok {
		return
	}
	(*Root)(e).WriteConfig(a, reg, data)
}

func fillOnes(b []byte) {
	for i := range b {
		b[i] = 0xff
	}
}

var (
	_ bus.Device = (*configPorts)(nil)
	_ bus.Device = (*ecam)(nil)
)
