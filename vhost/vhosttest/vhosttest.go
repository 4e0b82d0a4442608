// Package vhosttest is a stand-in for one vhost-net instance of the
// kernel, for tests on hosts without /dev/vhost-net: it keeps what the
// VMM configured, applies the kernel's rules about when a ring may be
// changed (VHOST_SET_VRING_NUM, _BASE and _ADDR answer EBUSY while the
// ring has a back-end, a ring needs its size, addresses and kick before
// it can start), and lets the test play the kernel's worker by setting
// where it stands in a ring. It moves no frames.
package vhosttest

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/vhost"
)

// Ring is what the VMM configured for one ring.
type Ring struct {
	Num      uint16
	Base     uint16 // the next available entry: SET_VRING_BASE's, or Advance's
	Addr     vhost.VringAddr
	Kick     int
	Call     int
	Err      int
	Backend  int // -1: none
	Attaches int // SetBackend calls with a descriptor
}

// Kernel is one fake vhost-net instance with two rings.
type Kernel struct {
	// Offer is what Features reports.
	Offer uint64

	mu       sync.Mutex
	features uint64
	featSet  bool
	mem      []vhost.MemoryRegion
	logBase  uint64
	rings    [2]Ring
	closed   bool
	calls    []string
}

// New returns an instance that offers offer.
func New(offer uint64) *Kernel {
	k := &Kernel{Offer: offer}
	for i := range k.rings {
		k.rings[i] = Ring{Kick: -1, Call: -1, Err: -1, Backend: -1}
	}
	return k
}

func (k *Kernel) ring(i uint32, name string) (*Ring, error) {
	if k.closed {
		return nil, fmt.Errorf("%s: %w", name, unix.EBADF)
	}
	if i >= uint32(len(k.rings)) {
		return nil, fmt.Errorf("%s ring %d: %w", name, i, unix.ENOBUFS)
	}
	k.calls = append(k.calls, fmt.Sprintf("%s %d", name, i))
	return &k.rings[i], nil
}

// Features implements vhostnet.Kernel.
func (k *Kernel) Features() (uint64, error) { return k.Offer, nil }

// SetFeatures implements vhostnet.Kernel: bits it does not offer are
// refused, as the kernel does.
func (k *Kernel) SetFeatures(f uint64) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if f&^k.Offer != 0 {
		return fmt.Errorf("VHOST_SET_FEATURES %#x: %w", f, unix.EOPNOTSUPP)
	}
	if f&vhost.FLogAll != 0 && k.logBase == 0 {
		return fmt.Errorf("VHOST_SET_FEATURES with LOG_ALL and no log: %w", unix.EFAULT)
	}
	k.features, k.featSet = f, true
	k.calls = append(k.calls, fmt.Sprintf("SET_FEATURES %#x", f))
	return nil
}

// SetMemTable implements vhostnet.Kernel.
func (k *Kernel) SetMemTable(r []vhost.MemoryRegion) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.mem = append([]vhost.MemoryRegion(nil), r...)
	return nil
}

// SetLogBase implements vhostnet.Kernel.
func (k *Kernel) SetLogBase(addr uint64) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.logBase = addr
	return nil
}

func (k *Kernel) idle(r *Ring, name string, i uint32) error {
	if r.Backend >= 0 {
		return fmt.Errorf("%s ring %d while it runs: %w", name, i, unix.EBUSY)
	}
	return nil
}

// SetVringNum implements vhostnet.Kernel.
func (k *Kernel) SetVringNum(i uint32, n uint16) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	r, err := k.ring(i, "SET_VRING_NUM")
	if err == nil {
		err = k.idle(r, "SET_VRING_NUM", i)
	}
	if err == nil {
		r.Num = n
	}
	return err
}

// SetVringBase implements vhostnet.Kernel.
func (k *Kernel) SetVringBase(i uint32, b uint16) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	r, err := k.ring(i, "SET_VRING_BASE")
	if err == nil {
		err = k.idle(r, "SET_VRING_BASE", i)
	}
	if err == nil {
		r.Base = b
	}
	return err
}

// VringBase implements vhostnet.Kernel.
func (k *Kernel) VringBase(i uint32) (uint16, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	r, err := k.ring(i, "GET_VRING_BASE")
	if err != nil {
		return 0, err
	}
	return r.Base, nil
}

// SetVringAddr implements vhostnet.Kernel: allowed while the ring runs,
// as the kernel allows it to switch the used ring's logging.
func (k *Kernel) SetVringAddr(a vhost.VringAddr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	r, err := k.ring(a.Index, "SET_VRING_ADDR")
	if err != nil {
		return err
	}
	if a.Flags&^vhost.VringFLog != 0 {
		return fmt.Errorf("SET_VRING_ADDR flags %#x: %w", a.Flags, unix.EOPNOTSUPP)
	}
	if a.Flags&vhost.VringFLog != 0 && k.logBase == 0 {
		return fmt.Errorf("SET_VRING_ADDR logging with no log: %w", unix.EINVAL)
	}
	r.Addr = a
	return nil
}

// SetVringKick implements vhostnet.Kernel.
func (k *Kernel) SetVringKick(i uint32, fd int) error { return k.setFD(i, "SET_VRING_KICK", fd) }

// SetVringCall implements vhostnet.Kernel.
func (k *Kernel) SetVringCall(i uint32, fd int) error { return k.setFD(i, "SET_VRING_CALL", fd) }

// SetVringErr implements vhostnet.Kernel.
func (k *Kernel) SetVringErr(i uint32, fd int) error { return k.setFD(i, "SET_VRING_ERR", fd) }

func (k *Kernel) setFD(i uint32, name string, fd int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	r, err := k.ring(i, name)
	if err != nil {
		return err
	}
	switch name {
	case "SET_VRING_KICK":
		r.Kick = fd
	case "SET_VRING_CALL":
		r.Call = fd
	default:
		r.Err = fd
	}
	return nil
}

// SetBackend implements vhostnet.Kernel: a ring starts only once it has
// its size, addresses, kick and the features were set.
func (k *Kernel) SetBackend(i uint32, fd int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	r, err := k.ring(i, "SET_BACKEND")
	if err != nil {
		return err
	}
	if fd >= 0 && (r.Num == 0 || r.Addr.Desc == 0 || r.Kick < 0 || !k.featSet || len(k.mem) == 0) {
		return fmt.Errorf("SET_BACKEND ring %d before it is configured: %w", i, unix.EFAULT)
	}
	if fd >= 0 {
		r.Attaches++
	}
	r.Backend = fd
	return nil
}

// Close implements vhostnet.Kernel.
func (k *Kernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed = true
	return nil
}

// Ring returns ring i as configured now.
func (k *Kernel) Ring(i int) Ring {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.rings[i]
}

// State returns the acknowledged features, the memory table and the log
// base.
func (k *Kernel) State() (features uint64, mem []vhost.MemoryRegion, logBase uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.features, append([]vhost.MemoryRegion(nil), k.mem...), k.logBase
}

// Advance plays the kernel's worker: ring i has taken (and completed)
// entries up to base, which GET_VRING_BASE then reports.
func (k *Kernel) Advance(i int, base uint16) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.rings[i].Base = base
}

// Closed reports whether Close was called.
func (k *Kernel) Closed() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.closed
}

// TAP is a TAP queue as vhost-net attaches it: Control runs fn with FD.
type TAP struct{ FD int }

// Control implements vhostnet.TAP.
func (t TAP) Control(fn func(fd int)) error {
	fn(t.FD)
	return nil
}
