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
