package loader

import (
	"fmt"
	"io"

	"github.com/viovmm/vio/memory"
)

// defaultInitrdAddrMax is boot.rst's value for kernels that leave the field
// zero (protocols before 2.03 do; a zero from a newer kernel is treated the
// same way, conservatively).
const defaultInitrdAddrMax = 0x37ffffff

// InitrdLimit returns the highest guest address the initrd's last byte may
// occupy. vio passes the initrd's address in the 32-bit ramdisk_image
// field, so the limit never exceeds 4 GiB even for kernels that could take
// one above it (XLF_CAN_BE_LOADED_ABOVE_4G).
func (h *Header) InitrdLimit() uint64 {
	m := uint64(h.InitrdAddrMax)
	if m == 0 {
		m = defaultInitrdAddrMax
	}
	return min(m, 1<<32-1)
}

// LoadInitrd copies the size-byte initrd read from r into guest memory, at
// the highest page-aligned address where it lies wholly in one RAM region,
// at or above minAddr (pass LoadInfo.End, so it cannot overlap the kernel)
// and at or below the kernel's InitrdLimit. Top of memory is where
// bootloaders put it: the kernel's early allocations grow upwards from its
// own end, so the initrd stays out of their way until it is unpacked.
func (k *Kernel) LoadInitrd(mem *memory.Memory, r io.ReaderAt, size int64, minAddr uint64) (addr uint64, err error) {
	return LoadInitrd(mem, r, size, minAddr, k.Header.InitrdLimit())
}

// LoadInitrd is Kernel.LoadInitrd for kernels without a setup header of
// their own (an ELF vmlinux): limit is the highest address the initrd's last
// byte may occupy.
func LoadInitrd(mem *memory.Memory, r io.ReaderAt, size int64, minAddr, limit uint64) (addr uint64, err error) {
	if size <= 0 {
		return 0, fmt.Errorf("loader: initrd is empty")
	}
	limit++ // first address the initrd may not touch
	n := uint64(size)
	regions := mem.Regions()
	var best uint64
	found := false
	for i := len(regions) - 1; i >= 0 && !found; i-- {
		rg := &regions[i]
		top := min(rg.End(), limit)
		lo := max(rg.GPA, minAddr)
		if top <= lo || top-lo < n {
			continue
		}
		a := (top - n) &^ 4095
		if a < lo {
			continue
		}
		best, found = a, true
	}
	if !found {
		return 0, fmt.Errorf("%w: a %d MiB initrd has no room in guest RAM between %#x and %#x (the kernel's initrd_addr_max); give the guest more memory",
			ErrTooBig, n>>20, minAddr, limit)
	}
	// Written through Slice, which dirty tracking does not see: loading
	// runs before the VM starts, and tracking (a migration) only after.
	dst, err := mem.Slice(best, n)
	if err != nil {
		return 0, fmt.Errorf("loader: initrd destination: %w", err)
	}
	if m, err := r.ReadAt(dst, 0); m < len(dst) {
		return 0, fmt.Errorf("loader: reading initrd (%d of %d bytes): %w", m, len(dst), err)
	}
	return best, nil
}
