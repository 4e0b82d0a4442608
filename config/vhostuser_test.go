package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A vhost-user disk: --disk vhost_user=on,socket=PATH and Cloud
// Hypervisor's JSON (vhost_user, vhost_socket); shared RAM required; the
// image keys refused with a sentence saying where they belong.
func TestVhostUserDisk(t *testing.T) {
	d, err := ParseDisk("vhost_user=on,socket=/run/d.sock,num_queues=2,queue_size=256")
	if err != nil {
		t.Fatal(err)
	}
	if !d.VhostUser || d.VhostSocket != "/run/d.sock" || d.NumQueues != 2 || d.QueueSize != 256 || d.Path != "" {
		t.Fatalf("parsed %+v", d)
	}
	if _, err := ParseDisk("path=a,socket=/x"); err == nil || !strings.Contains(err.Error(), "add vhost_user=on") {
		t.Fatalf("socket without vhost_user: %v", err)
	}
	kernel := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(kernel, []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	vm, err := Decode([]byte(`{"cpus":{"boot_vcpus":1},"memory":{"size":268435456,"shared":true},
		"payload":{"kernel":"` + kernel + `"},"disks":[{"vhost_user":true,"vhost_socket":"/run/d.sock"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Validate(); err != nil {
		t.Fatalf("valid vhost-user disk refused: %v", err)
	}
	for _, c := range []struct {
		disk   Disk
		shared bool
		want   string
	}{
		{Disk{VhostUser: true, VhostSocket: "/s"}, false, "add shared=on to --memory"},
		{Disk{VhostUser: true}, true, "add socket=PATH"},
		{Disk{VhostUser: true, VhostSocket: "/s", Path: "a"}, true, "drop path="},
		{Disk{VhostUser: true, VhostSocket: "/s", Readonly: true}, true, "set them there"},
		{Disk{VhostUser: true, VhostSocket: "/s", Iface: DiskIDE}, true, "drop iface=ide"},
		{Disk{VhostUser: true, VhostSocket: "/s", QueueSize: 100}, true, "power of two"},
	} {
		vm := &VM{CPUs: vm.CPUs, Memory: Memory{Size: 256 << 20, Shared: c.shared}, Payload: vm.Payload, Disks: []Disk{c.disk}}
		err := vm.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Count(err.Error(), "\n") > 0 {
			t.Errorf("%+v shared=%v: %v, want one line with %q", c.disk, c.shared, err, c.want)
		}
	}
}

// A vhost-user NIC: --net vhost_user=on,socket=PATH (socket= is then the
// back-end's, as in Cloud Hypervisor) and the JSON; the refusals.
func TestVhostUserNet(t *testing.T) {
	n, err := ParseNet("vhost_user=on,socket=/run/n.sock,mac=52:54:00:12:34:56")
	if err != nil {
		t.Fatal(err)
	}
	if !n.VhostUser || n.VhostSocket != "/run/n.sock" || n.Socket != "" || n.MAC != "52:54:00:12:34:56" {
		t.Fatalf("parsed %+v", n)
	}
	base := VM{Memory: Memory{Size: 256 << 20, Shared: true}}
	for _, c := range []struct {
		net    Net
		shared bool
		want   string
	}{
		{Net{VhostUser: true, VhostSocket: "/s"}, true, ""},
		{Net{VhostUser: true, VhostSocket: "/s", VhostMode: "client"}, true, ""},
		{Net{VhostUser: true, VhostSocket: "/s"}, false, "add shared=on to --memory"},
		{Net{VhostUser: true}, true, "add socket=PATH"},
		{Net{VhostUser: true, VhostSocket: "/s", VhostMode: "server"}, true, "start the back-end as the server"},
		{Net{VhostUser: true, VhostSocket: "/s", Tap: "t"}, true, "drop tap"},
		{Net{VhostUser: true, VhostSocket: "/s", Model: NetE1000}, true, "drop model=e1000"},
		{Net{VhostUser: true, VhostSocket: "/s", Pcap: "/p"}, true, "pass through vio"},
		{Net{VhostUser: true, VhostSocket: "/s", NumQueues: 4}, true, "one queue pair"},
	} {
		vm := base
		vm.Memory.Shared = c.shared
		vm.Net = []Net{c.net}
		err := vm.Net[0].validateVhostUser(0, vm.Memory.Shared)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v refused: %v", c.net, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v shared=%v: %v, want %q", c.net, c.shared, err, c.want)
		}
	}
}
