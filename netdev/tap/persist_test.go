//go:build linux

package tap_test

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/netdev/tap"
)

// A TAP made with ip tuntap add is persistent, one Open made is not; a
// single-queue TAP takes one descriptor (a second attach is EBUSY) until
// it is closed; CheckHost sees this kernel's TAP features without
// attaching to anything.
func TestPersistentAndBusy(t *testing.T) {
	ns := nettest.Netns(t, "viotapp")
	ip(t, "-n", ns, "tuntap", "add", "viop0", "mode", "tap")
	var p, second, fresh *tap.Tap
	var perr, serr, ferr error
	nettest.InNetns(t, ns, func() {
		p, perr = tap.Open("viop0")
		_, serr = tap.Open("viop0")
		fresh, ferr = tap.Open("viotmp%d")
	})
	for _, err := range []error{perr, ferr} {
		if err != nil {
			t.Fatal(err)
		}
	}
	defer fresh.Close()
	if !errors.Is(serr, unix.EBUSY) {
		t.Fatalf("a second attach of a single-queue TAP: %v, want EBUSY", serr)
	}
	if ok, err := p.Persistent(); err != nil || !ok {
		t.Errorf("the ip tuntap TAP: persistent %v, %v", ok, err)
	}
	if ok, err := fresh.Persistent(); err != nil || ok {
		t.Errorf("the TAP Open created: persistent %v, %v", ok, err)
	}
	p.Close()
	if _, err := p.Persistent(); err == nil {
		t.Error("Persistent of a closed TAP answered")
	}
	nettest.InNetns(t, ns, func() { second, serr = tap.Open("viop0") })
	if serr != nil {
		t.Fatalf("attaching once the first descriptor is closed: %v", serr)
	}
	second.Close()
	for _, multi := range []bool{false, true} {
		if err := tap.CheckHost(multi); err != nil {
			t.Errorf("CheckHost(%v): %v", multi, err)
		}
	}
}
