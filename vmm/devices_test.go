package vmm_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/vmm"
)

func ids(t *testing.T, c *vmm.Controller) []string {
	t.Helper()
	info, err := c.Info()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range info.Config.Disks {
		out = append(out, d.ID)
	}
	for _, n := range info.Config.Net {
		out = append(out, n.ID)
	}
	return out
}

// pipeFD returns a descriptor standing in for a TAP the client passed,
// and a check that it has been closed.
func pipeFD(t *testing.T) (int, func() bool) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[1]) })
	return p[0], func() bool {
		_, err := unix.FcntlInt(uintptr(p[0]), unix.F_GETFD, 0)
		return err == unix.EBADF
	}
}

// TestDeviceRegistry: ids are given to devices that have none, unique
// ones are kept, duplicates are refused; before boot devices come and go
// in the config only; on a running guest they are hot-plugged and
// removed through the Machine, with the config following.
func TestDeviceRegistry(t *testing.T) {
	c, b, cfg := newController(t)
	dup := cfg.Clone()
	dup.Disks = []config.Disk{{Path: "a", ID: "x"}, {Path: "b"}}
	dup.Net = []config.Net{{Tap: "t", ID: "x"}}
	if err := c.Create(dup); !errors.Is(err, vmm.ErrInvalidConfig) || !errors.Is(err, vmm.ErrDuplicateID) {
		t.Fatalf("Create with a duplicate id: %v", err)
	}
	cfg.Disks = []config.Disk{{Path: "a"}, {Path: "b", ID: "_disk0"}}
	cfg.Net = []config.Net{{Tap: "t"}}
	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	if got, want := ids(t, c), []string{"_disk1", "_disk0", "_net0"}; !slices.Equal(got, want) {
		t.Fatalf("ids %v, want %v", got, want)
	}
	if _, err := c.AddDisk(config.Disk{Path: "c", ID: "_net0"}); !errors.Is(err, vmm.ErrDuplicateID) {
		t.Fatalf("cold AddDisk with a duplicate id: %v", err)
	}
	if err := c.RemoveDevice("nope"); !errors.Is(err, vmm.ErrNoDevice) {
		t.Fatalf("RemoveDevice of an unknown id: %v", err)
	}
	if err := c.RemoveDevice("_disk1"); err != nil {
		t.Fatal(err)
	}
	if got, want := ids(t, c), []string{"_disk0", "_net0"}; !slices.Equal(got, want) {
		t.Fatalf("after a cold removal: ids %v, want %v", got, want)
	}

	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	info, err := c.AddDisk(config.Disk{Path: "hot", ID: "hd"})
	if err != nil || info == nil || info.ID != "hd" || info.BDF != "0000:00:01.0" {
		t.Fatalf("hot AddDisk: %+v, %v", info, err)
	}
	if _, err := c.AddDisk(config.Disk{Path: "hot2", ID: "hd"}); !errors.Is(err, vmm.ErrDuplicateID) {
		t.Fatalf("hot AddDisk with a duplicate id: %v", err)
	}
	fd, closed := pipeFD(t)
	ninfo, err := c.AddNet(config.Net{TapFDs: []int{fd}})
	if err != nil || ninfo == nil || ninfo.ID != "_net1" || ninfo.BDF != "0000:00:02.0" {
		t.Fatalf("hot AddNet with a descriptor: %+v, %v", ninfo, err)
	}
	if got, want := ids(t, c), []string{"_disk0", "hd", "_net0", "_net1"}; !slices.Equal(got, want) {
		t.Fatalf("after hot plug: ids %v, want %v", got, want)
	}
	if err := c.RemoveDevice("hd"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveDevice("_net1"); err != nil {
		t.Fatal(err)
	}
	if got, want := ids(t, c), []string{"_disk0", "_net0"}; !slices.Equal(got, want) {
		t.Fatalf("after hot removal: ids %v, want %v", got, want)
	}
	if !closed() {
		t.Error("the removed NIC's TAP descriptor is still open")
	}

	// A paused guest cannot release a device.
	if err := c.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveDevice("_disk0"); !errors.Is(err, vmm.ErrWrongState) {
		t.Fatalf("RemoveDevice while paused: %v", err)
	}
	if err := c.Resume(); err != nil {
		t.Fatal(err)
	}

	// A guest that does not answer in time: the device stays until it
	// does, then leaves the config.
	m := b.Last()
	m.HoldEjects()
	c.SetEjectWait(time.Millisecond)
	if err := c.RemoveDevice("_disk0"); !errors.Is(err, vmm.ErrNotReleased) {
		t.Fatalf("RemoveDevice of a device the guest holds: %v", err)
	}
	if got := ids(t, c); !slices.Contains(got, "_disk0") {
		t.Fatalf("ids %v: the unreleased disk left the config", got)
	}
	m.ReleaseHeld()
	deadline := time.Now().Add(5 * time.Second)
	for slices.Contains(ids(t, c), "_disk0") {
		if time.Now().After(deadline) {
			t.Fatal("the disk stayed in the config after the guest released it")
		}
		time.Sleep(time.Millisecond)
	}
	if err := m.Err(); err != nil {
		t.Fatal(err)
	}
	c.Delete()
}

// TestAddNetOwnsDescriptors: descriptors passed with a NIC are closed if
// it is refused, and when the VM is deleted.
func TestAddNetOwnsDescriptors(t *testing.T) {
	c, _, cfg := newController(t)
	fd, closed := pipeFD(t)
	if _, err := c.AddNet(config.Net{TapFDs: []int{fd}}); !errors.Is(err, vmm.ErrNotCreated) || !closed() {
		t.Fatalf("AddNet with no VM: %v, descriptor closed %v", err, closed())
	}
	if err := c.Create(cfg); err != nil {
		t.Fatal(err)
	}
	fd, closed = pipeFD(t)
	if _, err := c.AddNet(config.Net{TapFDs: []int{fd}, Model: "bogus"}); !errors.Is(err, vmm.ErrInvalidConfig) || !closed() {
		t.Fatalf("AddNet with a bad model: %v, descriptor closed %v", err, closed())
	}
	fd, closed = pipeFD(t)
	if _, err := c.AddNet(config.Net{TapFDs: []int{fd}}); err != nil || closed() {
		t.Fatalf("cold AddNet: %v, descriptor closed %v", err, closed())
	}
	c.Delete()
	if !closed() {
		t.Error("vm.delete left the NIC's descriptor open")
	}
}
