package memory

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Backing selects what host memory backs guest RAM.
type Backing int

const (
	// DefaultBacking is what New uses: see backingDefault.
	DefaultBacking Backing = iota
	// Anonymous is private anonymous memory (MAP_PRIVATE|MAP_ANONYMOUS). It
	// cannot be shared with another process.
	Anonymous
	// Memfd is one memfd for all regions, each at its own offset, mapped
	// MAP_SHARED. Region.File hands out (fd, offset) for vhost-user and
	// same-host migration.
	Memfd
)

// backingDefault is the backing New uses: Anonymous, because on a host
// whose shmem_enabled transparent-huge-page setting is "never" (the common
// default) a memfd is faulted in 4 KiB pages where anonymous memory gets
// 2 MiB ones, and first touch of guest RAM was 10 to 100 times slower (see
// docs/architecture.md for the figures). Ask for Memfd when RAM must be
// shared (vhost-user, same-host migration), as Cloud Hypervisor's
// shared=on does.
const backingDefault = Anonymous

func (b Backing) String() string {
	switch b {
	case DefaultBacking:
		return "default"
	case Anonymous:
		return "anonymous"
	case Memfd:
		return "memfd"
	}
	return fmt.Sprintf("Backing(%d)", int(b))
}

// Options tunes NewWithOptions.
type Options struct {
	Backing Backing
	// Name labels the memfd (it shows in /proc/PID/maps as /memfd:Name);
	// empty means "vio-guest-ram".
	Name string
}

// NewWithOptions allocates guest RAM for each range of layout. Sizes must be
// page multiples and ranges must not overlap. The guest sees the same thing
// whatever the backing: zero-filled RAM.
func NewWithOptions(layout []Layout, o Options) (*Memory, error) {
	ls := append([]Layout(nil), layout...)
	if err := checkLayout(ls); err != nil {
		return nil, err
	}
	b := o.Backing
	if b == DefaultBacking {
		b = backingDefault
	}
	m := &Memory{fd: -1}
	switch b {
	case Anonymous:
		for _, l := range ls {
			data, err := unix.Mmap(-1, 0, int(l.Size), unix.PROT_READ|unix.PROT_WRITE,
				unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
			if err != nil {
				m.Close()
				return nil, fmt.Errorf("memory: mapping %d MiB of guest RAM: %w", l.Size>>20, err)
			}
			hugepages(data)
			m.addRegion(Region{GPA: l.GPA, Data: data, fd: -1})
		}
	case Memfd:
		if err := m.mapMemfd(ls, o.Name); err != nil {
			m.Close()
			return nil, err
		}
	default:
		return nil, fmt.Errorf("memory: unknown backing %v", b)
	}
	m.mapped.Store(true)
	return m, nil
}

// hugepages asks for transparent huge pages, which cut EPT/NPT misses and
// page faults. Failure only costs speed. For a memfd the kernel honours it
// only when /sys/kernel/mm/transparent_hugepage/shmem_enabled is "advise"
// (or "always"/"within_size").
func hugepages(b []byte) { _ = unix.Madvise(b, unix.MADV_HUGEPAGE) }

// memfdSeals stop anyone holding the fd (a vhost-user back-end, a migration
// peer) from shrinking the file under our mapping, which would turn our next
// access into SIGBUS, or from growing it.
const memfdSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

func (m *Memory) mapMemfd(ls []Layout, name string) error {
	if name == "" {
		name = "vio-guest-ram"
	}
	var total uint64
	for _, l := range ls {
		if total+l.Size < total {
			return fmt.Errorf("memory: guest RAM larger than 2^64 bytes")
		}
		total += l.Size
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fmt.Errorf("memory: memfd_create for guest RAM: %w", err)
	}
	m.fd, m.ownsFD = fd, true
	if total > uint64(maxInt64) {
		return fmt.Errorf("memory: %d bytes of guest RAM do not fit in a file", total)
	}
	if err := unix.Ftruncate(fd, int64(total)); err != nil {
		return fmt.Errorf("memory: sizing the guest RAM memfd to %d MiB: %w", total>>20, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, memfdSeals); err != nil {
		return fmt.Errorf("memory: sealing the guest RAM memfd: %w", err)
	}
	var off uint64
	for _, l := range ls {
		data, err := unix.Mmap(fd, int64(off), int(l.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("memory: mapping %d MiB of guest RAM: %w", l.Size>>20, err)
		}
		hugepages(data)
		m.addRegion(Region{GPA: l.GPA, Data: data, fd: fd, fdOff: off, shared: true})
		off += l.Size
	}
	return nil
}

const maxInt64 = 1<<63 - 1

// FileRegion places the bytes [Offset, Offset+Size) of a file at guest
// physical address GPA.
type FileRegion struct {
	GPA    uint64
	Size   uint64
	Offset uint64
}

// MapMode says how NewFromFile maps a file.
type MapMode int

const (
	// Shared maps MAP_SHARED: guest writes reach the file and every other
	// mapping of it (a vhost-user back-end, the receiving side of a
	// same-host migration).
	Shared MapMode = iota
	// Private maps MAP_PRIVATE: pages are read from the file lazily on first
	// touch and copied on first write, and nothing is ever written back.
	// This restores a snapshot without reading all of it up front and
	// without changing it.
	Private
)

// ErrBadFile reports a file that cannot back the regions asked for.
var ErrBadFile = errors.New("memory: unusable guest RAM file")

// NewFromFile maps regions of the file fd as guest RAM: the receiving end of
// a same-host migration (Shared) or a snapshot restore (Private). The file
// may come from a peer, so it is checked: it must be at least as long as the
// furthest region, and a memfd that allows sealing is sealed against
// shrinking, so that the peer cannot later truncate it under us (an access
// past the end of a shared file is SIGBUS, not an error). A regular file can
// still be truncated by whoever owns it; restore from files that only the
// VMM's user can write.
//
// fd stays the caller's: a Shared Memory keeps its own duplicate, which
// Region.File hands out and Close closes; a Private one keeps none.
func NewFromFile(fd int, regions []FileRegion, mode MapMode) (*Memory, error) {
	if mode != Shared && mode != Private {
		return nil, fmt.Errorf("memory: unknown map mode %d", mode)
	}
	ls := make([]Layout, len(regions))
	for i, r := range regions {
		ls[i] = Layout{GPA: r.GPA, Size: r.Size}
	}
	if err := checkLayout(ls); err != nil {
		return nil, err
	}
	rs := append([]FileRegion(nil), regions...)
	slices.SortFunc(rs, func(a, b FileRegion) int { return cmp.Compare(a.GPA, b.GPA) })
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%w: fstat: %v", ErrBadFile, err)
	}
	page := uint64(unix.Getpagesize())
	for _, r := range rs {
		end := r.Offset + r.Size
		switch {
		case r.Offset%page != 0:
			return nil, fmt.Errorf("%w: region at %#x starts at file offset %#x, not page aligned", ErrBadFile, r.GPA, r.Offset)
		case end < r.Offset || end > uint64(maxInt64):
			return nil, fmt.Errorf("%w: region at %#x: file offset %#x+%#x overflows", ErrBadFile, r.GPA, r.Offset, r.Size)
		case st.Size < 0 || end > uint64(st.Size):
			return nil, fmt.Errorf("%w: region at %#x needs file bytes up to %#x, file has %#x", ErrBadFile, r.GPA, end, st.Size)
		}
	}
	m := &Memory{fd: -1}
	flags, prot := unix.MAP_SHARED, unix.PROT_READ|unix.PROT_WRITE
	if mode == Private {
		flags = unix.MAP_PRIVATE | unix.MAP_NORESERVE
	} else {
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("memory: duplicating the guest RAM fd: %w", err)
		}
		m.fd, m.ownsFD = dup, true
		// Best effort: EPERM (sealing not allowed, or already sealed
		// against more seals) and EINVAL (not a memfd) leave the size
		// check above as the only protection.
		_, _ = unix.FcntlInt(uintptr(dup), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK)
	}
	for _, r := range rs {
		data, err := unix.Mmap(fd, int64(r.Offset), int(r.Size), prot, flags)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("memory: mapping guest RAM at %#x from file offset %#x: %w", r.GPA, r.Offset, err)
		}
		hugepages(data)
		m.addRegion(Region{GPA: r.GPA, Data: data, fd: m.fd, fdOff: r.Offset, shared: mode == Shared})
	}
	m.mapped.Store(true)
	return m, nil
}

// Disown replaces every region's mapping, in place, with private zeroed
// memory, and the regions stop offering their file (Region.File): after a
// same-host migration has handed guest RAM to another process, which runs
// the guest on it now, nothing this process still does (a device closing,
// a stray goroutine) can write into the guest's pages, and no access here
// faults either. The addresses stay valid until Close.
func (m *Memory) Disown() error {
	var first error
	for i := range m.regions {
		r := &m.regions[i]
		if len(r.Data) == 0 {
			continue
		}
		_, err := unix.MmapPtr(-1, 0, unsafe.Pointer(&r.Data[0]), uintptr(len(r.Data)),
			unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED|unix.MAP_NORESERVE)
		if err != nil && first == nil {
			first = fmt.Errorf("memory: replacing guest RAM at %#x: %w", r.GPA, err)
		}
		r.shared = false
	}
	return first
}
