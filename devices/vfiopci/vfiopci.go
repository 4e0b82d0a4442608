// Package vfiopci passes a host PCI device through to a guest: a
// pci.Function whose BARs reach the physical device through VFIO and whose
// interrupts are the device's own, relayed to the guest's MSI-X vectors.
//
// The guest sees a configuration space vio emulates, not the device's: the
// device's identity (vendor, device, class, revision, subsystem), its BARs
// at addresses vio assigns, and an MSI-X capability of the device's size
// with the table and PBA where the device has them. Only the command
// register's memory, I/O and bus-master bits reach the device. So the
// guest cannot reprogram the device's BARs or interrupts behind vio, and
// capabilities that would let it manage the device (SR-IOV, power states,
// resizable BARs, the PCIe link) are not there: QEMU hides the first of
// those too. A device without MSI-X is refused.
//
// Where VFIO lets a BAR be mapped and the VMM gives a SlotMapper, the
// BAR's pages are mapped straight into the guest (KVM memory slots), so
// the guest's doorbell writes reach the device with no exit; the pages
// of the MSI-X table and PBA stay trapped. Other BAR accesses trap to vio
// and go to the device with pread/pwrite; those to the MSI-X table and
// PBA are served by the emulated capability. The
// device's MSI-X interrupts land on eventfds (VFIO_DEVICE_SET_IRQS) that
// vio relays to the guest's vectors through pci.MSIX, which honours the
// guest's masks and pending bits.
package vfiopci

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/vfio"
)

// Physical is the host device as this package uses it; *vfio.Device
// implements it.
type Physical interface {
	BDF() string
	Region(i int) vfio.Region
	ReadRegion(i int, off int64, p []byte) error
	WriteRegion(i int, off int64, p []byte) error
	SetIRQEventFDs(index, start int, fds []int32) error
	Mmap(i int, off int64, size int) ([]byte, error)
}

// HostDevice is a host device a VMM has opened for one of its guests:
// the Physical the guest's function reaches, which the VMM resets and
// closes when the guest is done with it. *vfio.Device implements it.
type HostDevice interface {
	Physical
	Reset() error
	Close() error
}

var _ HostDevice = (*vfio.Device)(nil)

// SlotMapper maps host memory (a piece of a device's BAR) into the guest
// at gpa, as KVM memory slots; the VMM implements it.
type SlotMapper interface {
	MapMMIO(gpa uint64, host []byte) (unmap func() error, err error)
}

// piece is a page-aligned part of a BAR mapped from the device.
type piece struct {
	off   uint64
	host  []byte
	unmap func() error // while it is in the guest
}

// ErrUnsupported is a device this package cannot pass through.
var ErrUnsupported = errors.New("vfiopci: cannot pass this device through")

// Device is a passed-through PCI function.
type Device struct {
	*pci.Config
	phys Physical
	msix *pci.MSIX

	msixBAR, pbaBAR     int
	tableOff, tableSize uint64
	pbaOff, pbaSize     uint64

	relays []*kvm.EventFD // what the device's vectors signal
	slots  SlotMapper
	direct [pci.NumBARs][]*piece // the BARs' pieces mapped into the guest

	irqs atomic.Uint64 // interrupts the device signalled

	mu       sync.Mutex
	physMSIX bool   // the device's MSI-X is on
	physCmd  uint16 // what the device's command register was last given
	closed   bool
	errs     uint64
}

// New builds the guest's view of phys. router delivers the guest's MSI-X
// messages (KVM GSI routes and irqfds in the VMM); slots, if not nil, maps
// the BARs' pages into the guest.
func New(phys Physical, router pci.MSIRouter, slots SlotMapper) (*Device, error) {
	d := &Device{phys: phys, slots: slots}
	hdr := make([]byte, 64)
	if err := phys.ReadRegion(vfio.RegionConfig, 0, hdr); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	if t := hdr[pci.RegHeaderType] & 0x7f; t != 0 {
		return nil, fmt.Errorf("%w: %s is a bridge (header type %d): pass through the devices behind it", ErrUnsupported, phys.BDF(), t)
	}
	h := pci.Header{
		VendorID:          le.Uint16(hdr[pci.RegVendorID:]),
		DeviceID:          le.Uint16(hdr[pci.RegDeviceID:]),
		Revision:          hdr[pci.RegRevisionID],
		Class:             uint32(hdr[pci.RegClassCode]) | uint32(hdr[pci.RegClassCode+1])<<8 | uint32(hdr[pci.RegClassCode+2])<<16,
		SubsystemVendorID: le.Uint16(hdr[pci.RegSubsystemVendorID:]),
		SubsystemID:       le.Uint16(hdr[pci.RegSubsystemID:]),
	}
	d.Config = pci.NewConfig(h)
	vectors, err := d.findMSIX(hdr)
	if err != nil {
		return nil, err
	}
	if err := d.declareBARs(hdr); err != nil {
		return nil, err
	}
	d.msix, err = pci.NewMSIX(d.Config, vectors,
		pci.MSIXLocation{BAR: d.msixBAR, Offset: uint32(d.tableOff)},
		pci.MSIXLocation{BAR: d.pbaBAR, Offset: uint32(d.pbaOff)}, router)
	if err != nil {
		return nil, fmt.Errorf("vfiopci: %s: %w", phys.BDF(), err)
	}
	if err := d.startRelays(vectors); err != nil {
		d.Close()
		return nil, err
	}
	if slots != nil {
		d.mapPieces()
	}
	return d, nil
}

// mapPieces maps from the device, for each memory BAR VFIO lets map, the
// page-aligned pieces that hold neither the MSI-X table nor the PBA. A
// piece that does not map stays trapped: slower, not wrong.
func (d *Device) mapPieces() {
	const page = 4096
	for i := 0; i < pci.NumBARs; i++ {
		b, _ := d.BAR(i)
		r := d.phys.Region(vfio.RegionBAR0 + i)
		if b.Kind != pci.BARMem32 && b.Kind != pci.BARMem64 || r.Flags&vfio.RegionMmap == 0 || b.Size < page {
			continue
		}
		var holes [][2]uint64 // page ranges that stay trapped
		if i == d.msixBAR {
			holes = append(holes, [2]uint64{d.tableOff &^ (page - 1), (d.tableOff + d.tableSize + page - 1) &^ (page - 1)})
		}
		if i == d.pbaBAR {
			holes = append(holes, [2]uint64{d.pbaOff &^ (page - 1), (d.pbaOff + d.pbaSize + page - 1) &^ (page - 1)})
		}
		for start := uint64(0); start < b.Size; {
			end, inHole := b.Size, false
			for _, h := range holes {
				if h[0] <= start && start < h[1] {
					start, inHole = h[1], true
					break
				}
				if h[0] > start && h[0] < end {
					end = h[0]
				}
			}
			if inHole {
				continue
			}
			host, err := d.phys.Mmap(vfio.RegionBAR0+i, int64(start), int(end-start))
			if err == nil {
				d.direct[i] = append(d.direct[i], &piece{off: start, host: host})
			}
			start = end
		}
	}
}

// findMSIX walks the device's capability list for MSI-X and returns its
// vector count, noting where its table and PBA are.
func (d *Device) findMSIX(hdr []byte) (int, error) {
	if binary.LittleEndian.Uint16(hdr[pci.RegStatus:])&pci.StatusCapList == 0 {
		return 0, fmt.Errorf("%w: %s has no capabilities, so no MSI-X", ErrUnsupported, d.phys.BDF())
	}
	off := int64(hdr[pci.RegCapabilitiesPtr] &^ 3)
	for hops := 0; off >= 0x40 && hops < 48; hops++ {
		id, err := d.physRead(off, 2)
		if err != nil {
			return 0, err
		}
		if id&0xff == pci.CapMSIX {
			ctl, err1 := d.physRead(off+2, 2)
			table, err2 := d.physRead(off+4, 4)
			pba, err3 := d.physRead(off+8, 4)
			if err := errors.Join(err1, err2, err3); err != nil {
				return 0, err
			}
			n := int(ctl&0x7ff) + 1
			d.msixBAR, d.tableOff, d.tableSize = int(table&7), uint64(table&^7), uint64(n)*pci.MSIXEntrySize
			d.pbaBAR, d.pbaOff, d.pbaSize = int(pba&7), uint64(pba&^7), uint64((n+63)/64*8)
			if d.msixBAR > 5 || d.pbaBAR > 5 {
				return 0, fmt.Errorf("%w: %s puts its MSI-X table in BAR%d", ErrUnsupported, d.phys.BDF(), d.msixBAR)
			}
			return n, nil
		}
		off = int64(id>>8) &^ 3
	}
	return 0, fmt.Errorf("%w: %s has no MSI-X (vio passes through MSI-X devices only)", ErrUnsupported, d.phys.BDF())
}

// declareBARs gives the guest's function the device's BARs: kinds from
// the device's BAR registers, sizes from VFIO's regions.
func (d *Device) declareBARs(hdr []byte) error {
	le := binary.LittleEndian
	for i := 0; i < pci.NumBARs; i++ {
		r := d.phys.Region(vfio.RegionBAR0 + i)
		v := le.Uint32(hdr[pci.RegBAR0+4*i:])
		if r.Size == 0 {
			continue
		}
		b := pci.BAR{Size: r.Size, Device: &bar{d: d, i: i}}
		switch {
		case v&1 == 1:
			b.Kind = pci.BARIO
		case v&6 == 4:
			b.Kind = pci.BARMem64
		default:
			b.Kind = pci.BARMem32
		}
		b.Prefetchable = v&1 == 0 && v&8 != 0
		if r.Size&(r.Size-1) != 0 || b.Kind != pci.BARIO && r.Size < 16 {
			return fmt.Errorf("%w: %s BAR%d has %#x bytes", ErrUnsupported, d.phys.BDF(), i, r.Size)
		}
		if err := d.SetBAR(i, b); err != nil {
			return fmt.Errorf("vfiopci: %s: %w", d.phys.BDF(), err)
		}
		if b.Kind == pci.BARMem64 {
			i++
		}
	}
	for _, w := range []struct {
		bar       int
		off, size uint64
	}{{d.msixBAR, d.tableOff, d.tableSize}, {d.pbaBAR, d.pbaOff, d.pbaSize}} {
		if b, _ := d.BAR(w.bar); b.Kind == pci.BARUnused || b.Kind == pci.BARIO || w.off+w.size > b.Size {
			return fmt.Errorf("%w: %s's MSI-X table or PBA lies outside BAR%d", ErrUnsupported, d.phys.BDF(), w.bar)
		}
	}
	return nil
}

func (d *Device) physRead(off int64, n int) (uint32, error) {
	var b [4]byte
	if err := d.phys.ReadRegion(vfio.RegionConfig, off, b[:n]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

// startRelays makes one eventfd per vector and a goroutine that hands
// each signal to the guest's vector. The eventfds are non-blocking, on
// Go's poller, so that Close wakes and ends the goroutines.
func (d *Device) startRelays(n int) error {
	for v := range n {
		fd, err := kvm.NewEventFD()
		if err != nil {
			return fmt.Errorf("vfiopci: %w", err)
		}
		d.relays = append(d.relays, fd)
		go d.relay(v, fd)
	}
	return nil
}

// relay waits on vector v's eventfd until Close closes it.
func (d *Device) relay(v int, fd *kvm.EventFD) {
	for {
		if _, err := fd.Wait(); err != nil {
			return
		}
		d.irqs.Add(1)
		if err := d.msix.Notify(v); err != nil && !errors.Is(err, pci.ErrMSIXDisabled) {
			d.countError()
		}
	}
}

// WriteConfig serves a guest configuration write, then gives the device
// what of it the device must see: the command register's enables, and
// MSI-X turned on or off.
func (d *Device) WriteConfig(off int, data []byte) {
	d.Config.WriteConfig(off, data)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	const pass = pci.CommandMemory | pci.CommandIO | pci.CommandBusMaster
	if cmd := d.Command() & pass; cmd != d.physCmd {
		// INTx stays disabled on the device: the guest has no INTx here.
		var b [2]byte
		binary.LittleEndian.PutUint16(b[:], cmd|pci.CommandINTxDisable)
		if d.phys.WriteRegion(vfio.RegionConfig, pci.RegCommand, b[:]) == nil {
			d.physCmd = cmd
		} else {
			d.errs++
		}
	}
	if on := d.msix.Enabled(); on != d.physMSIX {
		var err error
		if on {
			fds := make([]int32, len(d.relays))
			for i, fd := range d.relays {
				fds[i] = int32(fd.FD())
			}
			err = d.phys.SetIRQEventFDs(vfio.IRQMSIX, 0, fds)
		} else {
			err = d.phys.SetIRQEventFDs(vfio.IRQMSIX, 0, nil)
		}
		if err == nil {
			d.physMSIX = on
		} else {
			d.errs++
		}
	}
}

// BARMapped implements pci.Function: the BAR's mapped pieces enter the
// guest where the guest put the BAR, and leave it when the BAR moves or
// stops decoding.
func (d *Device) BARMapped(r pci.Region, mapped bool) {
	if r.BAR < 0 || r.BAR >= pci.NumBARs || d.slots == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.direct[r.BAR] {
		if p.unmap != nil {
			if p.unmap() != nil {
				d.errs++
			}
			p.unmap = nil
		}
		if mapped && !d.closed {
			if un, err := d.slots.MapMMIO(r.Addr+p.off, p.host); err == nil {
				p.unmap = un
			} else {
				d.errs++
			}
		}
	}
}

// DirectBytes is how many bytes of BAR i are mapped into the guest now.
func (d *Device) DirectBytes(i int) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	var n uint64
	if i >= 0 && i < pci.NumBARs {
		for _, p := range d.direct[i] {
			if p.unmap != nil {
				n += uint64(len(p.host))
			}
		}
	}
	return n
}

// MSIX returns the guest's MSI-X capability.
func (d *Device) MSIX() *pci.MSIX { return d.msix }

// Stats are a passed-through device's counters.
type Stats struct {
	Interrupts uint64 `json:"interrupts"` // signalled by the device
	// Held counts interrupts that found their vector masked by the
	// guest: they wait in the PBA until it unmasks it.
	Held   uint64 `json:"held"`
	Errors uint64 `json:"errors"` // failed accesses and deliveries
}

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	return Stats{Interrupts: d.irqs.Load(), Held: d.msix.Held(), Errors: d.Errors() + d.msix.Errors()}
}

// Errors counts device accesses and interrupt deliveries that failed.
func (d *Device) Errors() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.errs
}

// Close stops the device's interrupts and the relays; the owner closes
// the VFIO device itself.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	on := d.physMSIX
	d.physMSIX = false
	d.mu.Unlock()
	var err error
	if on {
		err = d.phys.SetIRQEventFDs(vfio.IRQMSIX, 0, nil)
	}
	for _, fd := range d.relays {
		fd.Close()
	}
	d.mu.Lock()
	for i := range d.direct {
		for _, p := range d.direct[i] {
			if p.unmap != nil {
				p.unmap()
				p.unmap = nil
			}
			unix.Munmap(p.host)
		}
		d.direct[i] = nil
	}
	d.mu.Unlock()
	return err
}

// bar forwards guest accesses to BAR i to the device, except those to
// the MSI-X table and PBA, which the emulated capability serves.
type bar struct {
	d *Device
	i int
}

// The parts of a BAR an access can fall in.
const (
	toDevice = iota
	toTable
	toPBA
)

// part says where an access of n bytes at off in BAR b goes, and its
// offset there.
func (b *bar) part(off uint64, n int) (int, uint64) {
	d := b.d
	switch end := off + uint64(n); {
	case b.i == d.msixBAR && off >= d.tableOff && end <= d.tableOff+d.tableSize:
		return toTable, off - d.tableOff
	case b.i == d.pbaBAR && off >= d.pbaOff && end <= d.pbaOff+d.pbaSize:
		return toPBA, off - d.pbaOff
	}
	return toDevice, off
}

func (b *bar) Read(off uint64, data []byte) {
	d := b.d
	switch p, rel := b.part(off, len(data)); p {
	case toTable:
		d.msix.ReadTable(rel, data)
	case toPBA:
		d.msix.ReadPBA(rel, data)
	default:
		if d.phys.ReadRegion(vfio.RegionBAR0+b.i, int64(off), data) != nil {
			for i := range data {
				data[i] = 0xff
			}
			d.countError()
		}
	}
}

func (b *bar) Write(off uint64, data []byte) {
	d := b.d
	switch p, rel := b.part(off, len(data)); p {
	case toTable:
		d.msix.WriteTable(rel, data)
	case toPBA:
		d.msix.WritePBA(rel, data)
	default:
		if d.phys.WriteRegion(vfio.RegionBAR0+b.i, int64(off), data) != nil {
			d.countError()
		}
	}
}

func (d *Device) countError() {
	d.mu.Lock()
	d.errs++
	d.mu.Unlock()
}
