//go:build linux

// Package tap is the netdev.Backend of a Linux TAP interface: frames go
// to and from the host kernel's network stack, where a bridge, routing or
// nftables take them further.
//
// The TAP is opened with IFF_VNET_HDR and a 12-byte header
// (virtio_net_hdr_v1), so frames cross it in exactly the format virtio-net
// uses, offloads included: a guest's 64 KiB TSO frame is one write, and
// the kernel hands the guest large frames too once SetRecvOffloads allows
// it (TUNSETOFFLOAD). The descriptor is non-blocking and registered with
// Go's poller, so a goroutine waiting for frames holds no OS thread.
package tap

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/netdev"
)

// Tap is one queue of a TAP interface.
type Tap struct {
	f        *os.File
	rc       syscall.RawConn
	name     string
	offloads netdev.Offloads
	multi    bool
	closed   atomic.Bool // the poller's "use of closed file" is not os.ErrClosed
}

var (
	_ netdev.Backend     = (*Tap)(nil)
	_ netdev.Offloader   = (*Tap)(nil)
	_ netdev.QueueSwitch = (*Tap)(nil)
)

// Open attaches to the TAP interface name, creating it if it does not
// exist (which needs CAP_NET_ADMIN; attaching to an existing one needs
// only access to it). A name with "%d" lets the kernel choose the number;
// Name returns the result. A TAP this process created disappears when the
// last descriptor is closed, unless it was made persistent (ip tuntap).
func Open(name string) (*Tap, error) {
	taps, err := open(name, 1, false)
	if err != nil {
		return nil, err
	}
	return taps[0], nil
}

// OpenQueues opens n queues of a multi-queue TAP (IFF_MULTI_QUEUE), one
// per virtio-net queue pair: each has its own descriptor, and the kernel
// spreads flows over them.
func OpenQueues(name string, n int) ([]*Tap, error) {
	if n < 1 || n > 256 {
		return nil, fmt.Errorf("tap: %d queues", n)
	}
	return open(name, n, true)
}

func open(name string, n int, multi bool) ([]*Tap, error) {
	var taps []*Tap
	fail := func(err error) ([]*Tap, error) {
		for _, t := range taps {
			t.Close()
		}
		return nil, err
	}
	for range n {
		t, err := openOne(name, multi)
		if err != nil {
			return fail(err)
		}
		// The next queues attach to the interface the first one named
		// (a "%d" pattern is resolved by then).
		name = t.name
		taps = append(taps, t)
	}
	return taps, nil
}

func openOne(name string, multi bool) (*Tap, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap: interface name %q: %w", name, err)
	}
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if multi {
		flags |= unix.IFF_MULTI_QUEUE
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		// The kernel answers EINVAL when an existing TAP's multi-queue
		// flag differs from ours, the mistake users make.
		switch {
		case err == unix.EINVAL && multi:
			return nil, fmt.Errorf("tap: cannot attach several queues to %s (TUNSETIFF: %w): if it exists, it must be a multi-queue TAP (ip tuntap add %s mode tap multi_queue)", name, err, name)
		case err == unix.EINVAL:
			return nil, fmt.Errorf("tap: cannot attach one queue to %s (TUNSETIFF: %w): if it exists as a multi-queue TAP, give the NIC queues=N, or recreate it without multi_queue", name, err)
		}
		return nil, fmt.Errorf("tap: TUNSETIFF %q: %w", name, err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, netdev.HeaderSize); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap: TUNSETVNETHDRSZ: %w", err)
	}
	t := &Tap{name: ifr.Name(), offloads: probeOffloads(fd), multi: multi}
	// Nothing that needs an offload reaches us until the front-end knows
	// what its guest can take.
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap: TUNSETOFFLOAD: %w", err)
	}
	// os.NewFile sees the non-blocking flag and registers fd with the
	// runtime poller.
	t.f = os.NewFile(uintptr(fd), "/dev/net/tun:"+t.name)
	if t.rc, err = t.f.SyscallConn(); err != nil {
		t.f.Close()
		return nil, fmt.Errorf("tap: %w", err)
	}
	return t, nil
}

// FromFD takes over a TAP descriptor that another process opened (Kata
// Containers passes one per queue pair with SCM_RIGHTS): it must be a TAP
// opened with IFF_VNET_HDR, which cannot be added after the fact, and
// should have IFF_NO_PI (which TUNGETIFF does not report reliably, so it
// is not checked). The Tap owns fd from then on, also when FromFD fails
// (it is closed). The descriptor is made non-blocking and close-on-exec.
func FromFD(fd int) (*Tap, error) {
	fail := func(err error) (*Tap, error) {
		unix.Close(fd)
		return nil, err
	}
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return fail(err)
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return fail(fmt.Errorf("tap: descriptor %d is not a TAP (TUNGETIFF: %w)", fd, err))
	}
	flags := ifr.Uint16()
	switch {
	case flags&unix.IFF_TAP == 0:
		return fail(fmt.Errorf("tap: descriptor %d is a TUN (layer 3) device %s, not a TAP: open it with IFF_TAP", fd, ifr.Name()))
	case flags&unix.IFF_VNET_HDR == 0:
		return fail(fmt.Errorf("tap: descriptor %d (%s) was opened without IFF_VNET_HDR, which vio needs for virtio-net headers: open it with vnet_hdr", fd, ifr.Name()))
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, netdev.HeaderSize); err != nil {
		return fail(fmt.Errorf("tap: TUNSETVNETHDRSZ: %w", err))
	}
	t := &Tap{name: ifr.Name(), offloads: probeOffloads(fd), multi: flags&unix.IFF_MULTI_QUEUE != 0}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
		return fail(fmt.Errorf("tap: TUNSETOFFLOAD: %w", err))
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		return fail(fmt.Errorf("tap: %w", err))
	}
	t.f = os.NewFile(uintptr(fd), "tap-fd:"+t.name)
	if t.rc, err = t.f.SyscallConn(); err != nil {
		t.f.Close()
		return nil, fmt.Errorf("tap: %w", err)
	}
	return t, nil
}

// BaseOffloads are the offloads every TAP supports: checksum offload and
// TSO (IPv4, IPv6, with ECN), which Linux has had since TUNSETOFFLOAD
// appeared (2.6.27). What a TAP offers beyond them (UDP segmentation)
// depends on the kernel.
const BaseOffloads = netdev.OffloadCsum | netdev.OffloadTSO4 | netdev.OffloadTSO6 | netdev.OffloadTSOECN

// probeOffloads finds what the running kernel lets a TAP deliver: the
// classic checksum and TSO set always, UDP segmentation only on kernels
// that know it (6.2 and later). UFO is not offered: Linux stopped
// producing it in 4.14.
func probeOffloads(fd int) netdev.Offloads {
	o := BaseOffloads
	if unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, unix.TUN_F_CSUM|unix.TUN_F_USO4|unix.TUN_F_USO6) == nil {
		o |= netdev.OffloadUSO4 | netdev.OffloadUSO6
	}
	return o
}

// CheckHost reports whether this host can attach a TAP as Open (multi
// false) or OpenQueues (multi true) do, without attaching to any: it opens
// /dev/net/tun and asks which interface flags the kernel supports
// (TUNGETFEATURES, which needs no interface). It does not say whether a
// given TAP exists, may be attached by this process or is free.
func CheckHost(multi bool) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tap: open /dev/net/tun: %w", err)
	}
	defer unix.Close(fd)
	have, err := unix.IoctlGetUint32(fd, unix.TUNGETFEATURES)
	if err != nil {
		return fmt.Errorf("tap: TUNGETFEATURES: %w", err)
	}
	need := uint32(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if multi {
		need |= unix.IFF_MULTI_QUEUE
	}
	if missing := need &^ have; missing != 0 {
		return fmt.Errorf("tap: this kernel's TAP devices lack the flags %#x (it has %#x)", missing, have)
	}
	return nil
}

// Persistent reports whether the interface outlives its descriptors
// (IFF_PERSIST: made with ip tuntap add, or TUNSETPERSIST). A TAP that is
// not persistent disappears, with its addresses and its bridge port, when
// its last queue is closed.
func (t *Tap) Persistent() (bool, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return false, err
	}
	var ioErr error
	if err := t.rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr)
	}); err != nil {
		return false, t.wrap(err)
	}
	if ioErr != nil {
		return false, fmt.Errorf("tap %s: TUNGETIFF: %w", t.name, ioErr)
	}
	return ifr.Uint16()&unix.IFF_PERSIST != 0, nil
}

// Control runs fn with the queue's descriptor, which stays open until fn
// returns: for a consumer that takes its own reference to the TAP, such
// as the kernel's vhost-net (VHOST_NET_SET_BACKEND). fn must not read,
// write or close it.
func (t *Tap) Control(fn func(fd int)) error {
	if err := t.rc.Control(func(fd uintptr) { fn(int(fd)) }); err != nil {
		return t.wrap(err)
	}
	return nil
}

// Name returns the interface's name.
func (t *Tap) Name() string { return t.name }

// Offloads implements netdev.Offloader.
func (t *Tap) Offloads() netdev.Offloads { return t.offloads }

// SetRecvOffloads implements netdev.Offloader with TUNSETOFFLOAD.
func (t *Tap) SetRecvOffloads(o netdev.Offloads) error {
	if o&^t.offloads != 0 {
		return fmt.Errorf("tap: offloads %#x not supported", o&^t.offloads)
	}
	var flags int
	for _, m := range []struct {
		o netdev.Offloads
		f int
	}{
		{netdev.OffloadCsum, unix.TUN_F_CSUM},
		{netdev.OffloadTSO4, unix.TUN_F_TSO4},
		{netdev.OffloadTSO6, unix.TUN_F_TSO6},
		{netdev.OffloadTSOECN, unix.TUN_F_TSO_ECN},
		{netdev.OffloadUFO, unix.TUN_F_UFO},
		{netdev.OffloadUSO4, unix.TUN_F_USO4},
		{netdev.OffloadUSO6, unix.TUN_F_USO6},
	} {
		if o&m.o != 0 {
			flags |= m.f
		}
	}
	// The kernel refuses segmentation without checksum offload.
	if flags != 0 && flags&unix.TUN_F_CSUM == 0 {
		return fmt.Errorf("tap: segmentation offloads %#x need checksum offload", o)
	}
	var ioErr error
	err := t.rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, flags)
	})
	if err != nil {
		return t.wrap(err)
	}
	if ioErr != nil {
		return fmt.Errorf("tap: TUNSETOFFLOAD %#x: %w", flags, ioErr)
	}
	return nil
}

// SetQueueEnabled implements netdev.QueueSwitch with TUNSETQUEUE: a
// detached queue of a multi-queue TAP gets no traffic. On a single-queue
// TAP it only accepts true.
func (t *Tap) SetQueueEnabled(on bool) error {
	if !t.multi {
		if on {
			return nil
		}
		return fmt.Errorf("tap %s: not a multi-queue TAP", t.name)
	}
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return err
	}
	flag := uint16(unix.IFF_DETACH_QUEUE)
	if on {
		flag = unix.IFF_ATTACH_QUEUE
	}
	ifr.SetUint16(flag)
	var ioErr error
	if err := t.rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlIfreq(int(fd), unix.TUNSETQUEUE, ifr)
	}); err != nil {
		return t.wrap(err)
	}
	if ioErr == unix.EINVAL && on {
		return nil // already attached
	}
	if ioErr != nil {
		return fmt.Errorf("tap %s: TUNSETQUEUE %#x: %w", t.name, flag, ioErr)
	}
	return nil
}

// ReadFrames implements netdev.Backend: one read(2) per frame, as many as
// are queued, and a wait in the poller when none is.
func (t *Tap) ReadFrames(bufs [][]byte, sizes []int) (int, error) {
	if len(bufs) == 0 || len(sizes) < len(bufs) {
		return 0, fmt.Errorf("tap: %d buffers, %d sizes", len(bufs), len(sizes))
	}
	n := 0
	var rerr error
	err := t.rc.Read(func(fd uintptr) bool {
		for n < len(bufs) {
			m, err := unix.Read(int(fd), bufs[n])
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return n > 0 // nothing yet: wait for the poller
			case err != nil:
				rerr = err
				return true
			case m < netdev.HeaderSize:
				continue // cannot happen with IFF_VNET_HDR; skip it
			}
			sizes[n] = m
			n++
		}
		return true
	})
	if n > 0 {
		return n, nil
	}
	if err != nil {
		return 0, t.wrap(err)
	}
	return 0, fmt.Errorf("tap: read %s: %w", t.name, rerr)
}

// WriteFrames implements netdev.Backend: one writev(2) per frame, straight
// from the caller's buffers. The kernel validates each header itself;
// a frame it refuses (EINVAL), or any frame while the interface is down
// (EIO), is reported for that frame alone.
func (t *Tap) WriteFrames(frames [][][]byte) (int, error) {
	for i, f := range frames {
		var werr error
		err := t.rc.Write(func(fd uintptr) bool {
			for {
				_, werr = unix.Writev(int(fd), f)
				switch werr {
				case unix.EINTR:
					continue
				case unix.EAGAIN:
					return false
				}
				return true
			}
		})
		if err != nil {
			return i, t.wrap(err)
		}
		if werr != nil {
			return i, fmt.Errorf("tap: write %s: %w", t.name, werr)
		}
	}
	return len(frames), nil
}

// SetReadDeadline implements netdev.Backend.
func (t *Tap) SetReadDeadline(d time.Time) error {
	return t.wrap(t.f.SetReadDeadline(d))
}

// Close implements netdev.Backend.
func (t *Tap) Close() error {
	t.closed.Store(true)
	return t.wrap(t.f.Close())
}

// wrap maps the os package's closed-file error to netdev.ErrClosed.
func (t *Tap) wrap(err error) error {
	switch {
	case err == nil:
		return nil
	case t.closed.Load() || errors.Is(err, os.ErrClosed):
		return fmt.Errorf("tap %s: %w (%w)", t.name, netdev.ErrClosed, err)
	}
	return fmt.Errorf("tap %s: %w", t.name, err)
}
