//go:build linux

package tap_test

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/netdev/tap"
)

// openRaw opens /dev/net/tun as another process (Kata's agent side)
// would, with the given flags, in netns ns.
func openRaw(t *testing.T, ns, name string, flags uint16) int {
	t.Helper()
	fd := -1
	var err error
	nettest.InNetns(t, ns, func() {
		if fd, err = unix.Open("/dev/net/tun", unix.O_RDWR, 0); err != nil {
			return
		}
		var ifr *unix.Ifreq
		if ifr, err = unix.NewIfreq(name); err != nil {
			return
		}
		ifr.SetUint16(flags)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		t.Fatal(err)
	}
	return fd
}

// TestFromFD: a passed TAP descriptor works like an opened one (the
// kernel answers an ARP request through it), and descriptors vio cannot
// use are refused with a sentence and closed.
func TestFromFD(t *testing.T) {
	ns := nettest.Netns(t, "viotapfd")
	fd := openRaw(t, ns, "viofd0", unix.IFF_TAP|unix.IFF_NO_PI|unix.IFF_VNET_HDR)
	tp, err := tap.FromFD(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	if tp.Name() != "viofd0" || tp.Offloads()&netdev.OffloadTSO4 == 0 {
		t.Errorf("name %q offloads %#x", tp.Name(), tp.Offloads())
	}
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Errorf("descriptor flags %#x (%v): want O_NONBLOCK", fl, err)
	}
	ip(t, "-n", ns, "link", "set", tp.Name(), "up")
	ip(t, "-n", ns, "addr", "add", "10.9.0.1/24", "dev", tp.Name())
	send(t, tp, netdev.Header{}, arpRequest())
	if _, reply := recvMatching(t, tp, func(_ netdev.Header, f []byte) bool {
		return len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06
	}); reply == nil {
		t.Fatal("no ARP reply through the passed descriptor")
	}

	for _, c := range []struct {
		flags uint16
		want  string
	}{
		{unix.IFF_TAP | unix.IFF_NO_PI, "IFF_VNET_HDR"},
		{unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR, "not a TAP"},
	} {
		fd := openRaw(t, ns, "viobad%d", c.flags)
		if _, err := tap.FromFD(fd); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("flags %#x: %v, want an error naming %s", c.flags, err, c.want)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			t.Errorf("flags %#x: the refused descriptor is still open", c.flags)
		}
	}
	var p [2]int
	if err := unix.Pipe(p[:]); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[1])
	if _, err := tap.FromFD(p[0]); err == nil || !strings.Contains(err.Error(), "not a TAP") {
		t.Errorf("a pipe: %v", err)
	}
}
