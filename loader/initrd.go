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

// LoadInitrd copies the size-byte initrd read from r into guest memory
// where PlaceInitrd puts it: the highest page-aligned address where it lies
// wholly in one RAM region, at or above minAddr (pass LoadInfo.End, so it
// cannot overlap the kernel) and at or below the kernel's InitrdLimit.
func (k *Kernel) LoadInitrd(mem *memory.Memory, r io.ReaderAt, size int64, minAddr uint64) (addr uint64, err error) {
	return LoadInitrd(mem, r, size, minAddr, k.Header.InitrdLimit())
}

// LoadInitrd is Kernel.LoadInitrd for kernels without a setup header of
// their own (an ELF vmlinux): limit is the highest address the initrd's last
// byte may occupy.
func LoadInitrd(mem *memory.Memory, r io.ReaderAt, size int64, minAddr, limit uint64) (addr uint64, err error) {
	best, err := PlaceInitrd(Layout(mem), size, minAddr, limit)
	if err != nil {
		return 0, err
	}
	n := uint64(size)
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
