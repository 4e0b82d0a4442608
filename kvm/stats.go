package kvm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrNoStats reports a kernel without binary statistics (KVM_GET_STATS_FD,
// Linux 5.14+). Callers treat it as "no counters", not as a failure.
var ErrNoStats = errors.New("kvm: binary statistics not supported")

// Stats reads a VM's or vCPU's binary statistics file (KVM_GET_STATS_FD):
// named counters such as "exits", "io_exits", "mmio_exits", "halt_exits" on
// a vCPU. Which exits KVM counts under which name is the kernel's business
// (on PVM, port I/O is not counted in "io_exits"; see the package comment). The descriptor table is read once; each Get or Snapshot reads
// current values with pread, without entering the vCPU.
type Stats struct {
	fd      int
	dataOff int64
	dataLen int
	index   map[string]statsField
}

type statsField struct {
	off  int // byte offset in the data block
	size int // number of uint64 values (1 for plain counters)
}

// Stats opens the VM's statistics. ErrNoStats if the kernel has none.
func (vm *VM) Stats() (*Stats, error) { return openStats(vm.fd) }

// Stats opens the vCPU's statistics. ErrNoStats if the kernel has none.
// Reading them is safe while the vCPU runs.
func (c *VCPU) Stats() (*Stats, error) { return openStats(c.fd) }

// maxStatsDescs bounds the descriptor table we are willing to read.
const maxStatsDescs = 4096

func openStats(owner int) (*Stats, error) {
	fd, err := ioctl(owner, ioctlGetStatsFD, 0)
	if err != nil {
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("%w: %v", ErrNoStats, err)
		}
		return nil, ioctlError("KVM_GET_STATS_FD", err)
	}
	unix.CloseOnExec(int(fd))
	s := &Stats{fd: int(fd)}
	if err := s.readDescs(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Stats) readDescs() error {
	hb := make([]byte, sizeofStatsHeader)
	if err := preadFull(s.fd, hb, 0); err != nil {
		return fmt.Errorf("kvm: reading stats header: %w", err)
	}
	var h statsHeader
	if _, err := binary.Decode(hb, binary.NativeEndian, &h); err != nil {
		return err
	}
	if h.NumDesc > maxStatsDescs || h.NameSize == 0 || h.NameSize > 4096 {
		return fmt.Errorf("kvm: implausible stats header %+v", h)
	}
	stride := sizeofStatsDesc + int(h.NameSize)
	db := make([]byte, int(h.NumDesc)*stride)
	if err := preadFull(s.fd, db, int64(h.DescOffset)); err != nil {
		return fmt.Errorf("kvm: reading stats descriptors: %w", err)
	}
	s.dataOff = int64(h.DataOffset)
	s.index = make(map[string]statsField, h.NumDesc)
	for i := 0; i < int(h.NumDesc); i++ {
		d := db[i*stride : (i+1)*stride]
		var sd statsDesc
		if _, err := binary.Decode(d, binary.NativeEndian, &sd); err != nil {
			return err
		}
		name := d[sizeofStatsDesc:]
		if j := bytes.IndexByte(name, 0); j >= 0 {
			name = name[:j]
		}
		f := statsField{off: int(sd.Offset), size: int(sd.Size)}
		s.index[string(name)] = f
		s.dataLen = max(s.dataLen, f.off+8*f.size)
	}
	return nil
}

func preadFull(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pread(fd, b, off)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		if n == 0 {
			return errors.New("short read")
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// Names returns the names of all statistics.
func (s *Stats) Names() []string {
	names := make([]string, 0, len(s.index))
	for n := range s.index {
		names = append(names, n)
	}
	return names
}

// Has reports whether the statistic exists.
func (s *Stats) Has(name string) bool { _, ok := s.index[name]; return ok }

// Get reads one statistic's current value (the first bucket, for a
// histogram). It is an error if the name is unknown.
func (s *Stats) Get(name string) (uint64, error) {
	f, ok := s.index[name]
	if !ok {
		return 0, fmt.Errorf("kvm: no statistic %q", name)
	}
	var b [8]byte
	if err := preadFull(s.fd, b[:], s.dataOff+int64(f.off)); err != nil {
		return 0, fmt.Errorf("kvm: reading statistic %q: %w", name, err)
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

// Snapshot reads every single-valued statistic at once (one pread).
func (s *Stats) Snapshot() (map[string]uint64, error) {
	b := make([]byte, s.dataLen)
	if err := preadFull(s.fd, b, s.dataOff); err != nil {
		return nil, fmt.Errorf("kvm: reading statistics: %w", err)
	}
	m := make(map[string]uint64, len(s.index))
	for n, f := range s.index {
		if f.size == 1 {
			m[n] = binary.NativeEndian.Uint64(b[f.off:])
		}
	}
	return m, nil
}

// Close closes the statistics file.
func (s *Stats) Close() error { return closeFD(&s.fd) }
