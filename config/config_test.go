package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512M": 512 << 20, "2G": 2 << 30, "1T": 1 << 40, "4096": 4096, "64K": 64 << 10, "1GiB": 1 << 30, "1Gi": 1 << 30, "1Mi": 1 << 20} {
		got, err := ParseSize(in)
		if want < 0 {
			if err == nil {
				t.Errorf("ParseSize(%q) = %d, want an error", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1M", "1X", "99999999999T", "1iB", "G"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
	if FormatSize(3<<30) != "3G" || FormatSize(1000) != "1000" {
		t.Error("FormatSize")
	}
}

func TestParseDiskAndNet(t *testing.T) {
	d, err := ParseDisk("path=a.img,readonly=on,cache=none,serial=abc,num_queues=2")
	if err != nil || d.Path != "a.img" || !d.Readonly || d.Cache != "none" || d.Serial != "abc" || d.NumQueues != 2 {
		t.Fatalf("ParseDisk: %+v %v", d, err)
	}
	for _, bad := range []string{"readonly=on", "path=a,readonly=maybe", "path=a,bogus=1", "path=a,path=b", "path", "path=a,serial=123456789012345678901"} {
		if _, err := ParseDisk(bad); err == nil {
			t.Errorf("ParseDisk(%q) accepted", bad)
		}
	}
	if d, err := ParseDisk("path=a.img,poll=adaptive:100us"); err != nil || d.Poll != "adaptive:100us" {
		t.Fatalf("ParseDisk poll: %+v %v", d, err)
	}
	if _, err := ParseDisk("path=a.img,poll=fast"); err == nil || !strings.Contains(err.Error(), "poll=fast") {
		t.Errorf("ParseDisk(poll=fast): %v", err)
	}
	if d, err := ParseDisk("iface=cdrom"); err != nil || d.Iface != DiskCDROM || !d.Readonly || d.Path != "" {
		t.Fatalf("ParseDisk empty cdrom: %+v %v", d, err)
	}
	if d, err := ParseDisk("path=x.iso,iface=cdrom"); err != nil || !d.Readonly {
		t.Fatalf("ParseDisk cdrom: %+v %v", d, err)
	}
	if d, err := ParseDisk("path=a.img,iface=ide"); err != nil || d.Iface != DiskIDE || d.Readonly {
		t.Fatalf("ParseDisk ide: %+v %v", d, err)
	}
	for _, bad := range []string{"path=a,iface=scsi", "iface=ide"} {
		if _, err := ParseDisk(bad); err == nil {
			t.Errorf("ParseDisk(%q) accepted", bad)
		}
	}
	n, err := ParseNet("tap=tap0,mac=52:54:00:12:34:56")
	if err != nil || n.Tap != "tap0" || n.MAC != "52:54:00:12:34:56" {
		t.Fatalf("ParseNet: %+v %v", n, err)
	}
	if n, err := ParseNet("tap=tap0,model=e1000"); err != nil || n.Model != NetE1000 {
		t.Fatalf("ParseNet model=e1000: %+v %v", n, err)
	}
	for _, bad := range []string{"tap=t,model=rtl8139", "mac=52:54:00:12:34:56", "tap=t,mac=01:00:00:00:00:01", "tap=t,mac=zz:00:00:00:00:01", "tap=t,x=1"} {
		if _, err := ParseNet(bad); err == nil {
			t.Errorf("ParseNet(%q) accepted", bad)
		}
	}
}

// Each user mistake gets one sentence that names what is wrong.
func TestValidateMessages(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "k")
	os.WriteFile(kernel, []byte("x"), 0o644)
	for _, c := range []struct {
		mut  func(*VM)
		want string
	}{
		{func(c *VM) { c.Payload.Kernel = "" }, "no kernel given"},
		{func(c *VM) { c.Payload.Kernel = filepath.Join(dir, "missing") }, "does not exist"},
		{func(c *VM) { c.Payload.Kernel = dir }, "is a directory"},
		{func(c *VM) { c.Memory.Size = 1 << 20 }, "too small"},
		{func(c *VM) { c.Memory.Size = 1 << 50 }, "more than this host"},
		{func(c *VM) { c.Memory.Size = 33<<20 + 4096 }, "multiple of 2 MiB"},
		{func(c *VM) { c.CPUs.BootVCPUs = 0 }, "vCPUs requested"},
		{func(c *VM) { c.OnReboot = "explode" }, "on_reboot"},
		{func(c *VM) { c.Serial = Console{Mode: "Weird"} }, "serial mode"},
		{func(c *VM) { c.Disks = []Disk{{Path: "x", Cache: "fast"}} }, "cache mode"},
		{func(c *VM) { c.Net = []Net{{Tap: "t", Model: "ne2000"}} }, "want virtio or e1000"},
		{func(c *VM) { c.Disks = []Disk{{Path: "x", Iface: "scsi"}} }, "want virtio, ide or cdrom"},
		{func(c *VM) { c.Disks = []Disk{{Iface: DiskIDE}} }, "has no path"},
		{func(c *VM) { c.Disks = []Disk{{Path: "x", Iface: DiskIDE, NumQueues: 2}} }, "no queues"},
		{func(c *VM) { c.Disks = []Disk{{Path: "x", Iface: DiskIDE, Poll: "50"}} }, "ring polling is for virtio disks"},
		{func(c *VM) { c.Disks = []Disk{{Path: "x", Poll: "5000"}} }, "disk 0: poll=5000"},
		{func(c *VM) {
			c.Memory.Shared = true
			c.Disks = []Disk{{VhostUser: true, VhostSocket: "/s", Poll: "adaptive"}}
		}, "poll, rate limits"},
		{func(c *VM) {
			c.Disks = make([]Disk, 5)
			for i := range c.Disks {
				c.Disks[i].Iface = DiskCDROM
			}
		}, "at most 4"},
		{func(c *VM) { c.Net = []Net{{Tap: "t", Model: NetE1000, NumQueues: 4}} }, "one queue pair"},
		{func(c *VM) { c.Net = []Net{{Tap: "t", NumQueues: 3}} }, "net 0: num_queues 3: a NIC's queues come in receive/transmit pairs"},
		{func(c *VM) { c.Net = []Net{{Tap: "t", NumQueues: -2}} }, "net 0: num_queues -2"},
		{func(c *VM) { c.Net = []Net{{Tap: "t", NumQueues: 130}} }, "at most 64 queue pairs"},
		{func(c *VM) { c.Net = []Net{{User: &UserNet{}, NumQueues: 4}} }, "net 0: 2 queue pairs need a TAP back-end"},
		{func(c *VM) { c.Net = []Net{{Socket: "/s", NumQueues: 4}} }, "need a TAP back-end"},
		{func(c *VM) { c.Net = []Net{{Bond: &NetBond{Sockets: []string{"/a", "/b"}}, NumQueues: 8}} }, "need a TAP back-end"},
		{func(c *VM) { c.Net = []Net{{Tap: "t", Pcap: "/x.pcap", NumQueues: 4}} }, "firewall, pcap and ids see the frames of one queue pair"},
		{func(c *VM) { c.Disks = []Disk{{Path: "x", QueueSize: 65536}} }, "disk 0: queue_size 65536: give a power of two"},
		{func(c *VM) { c.Disks = []Disk{{Path: "x", QueueSize: 100}} }, "queue_size 100"},
		{func(c *VM) { c.Disks = []Disk{{Path: "x", QueueSize: -1}} }, "queue_size -1"},
		{func(c *VM) { c.Net = []Net{{Tap: "t", QueueSize: 1}} }, "net 0: queue_size 1"},
	} {
		cfg := Default()
		cfg.Payload.Kernel = kernel
		c.mut(cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("want an error about %q, got %v", c.want, err)
		}
	}
	cfg := Default()
	cfg.Payload.Kernel = kernel
	if err := cfg.Validate(); err != nil {
		t.Errorf("defaults with a kernel: %v", err)
	}
	// Cloud Hypervisor's num_queues counts both directions: 2 is one pair
	// on any back-end (and an e1000), 8 is 4 pairs on a TAP.
	cfg.Net = []Net{{Tap: "t", Model: NetE1000, NumQueues: 2}, {User: &UserNet{}, NumQueues: 2}, {Tap: "t", NumQueues: 8}, {TapFDs: []int{3, 4}, NumQueues: 4}}
	if err := cfg.Validate(); err != nil {
		t.Errorf("num_queues 2 and 8: %v", err)
	}
	if p := cfg.Net[2].QueuePairs(); p != 4 {
		t.Errorf("num_queues 8 is %d pairs", p)
	}
}

// TestParseNetQueues: queues=N counts pairs (QEMU's key), num_queues=2N
// both directions (Cloud Hypervisor's); they may be given together if they
// agree, and each bad value gets one sentence.
func TestParseNetQueues(t *testing.T) {
	for spec, pairs := range map[string]int{
		"tap=t":                         1,
		"tap=t,queues=4":                4,
		"tap=t,num_queues=8":            4,
		"tap=t,queues=2,num_queues=4":   2,
		"tap=t,num_queues=2":            1,
		"user=on,queues=1":              1,
		"tap=t,queues=64,queue_size=64": 64,
	} {
		n, err := ParseNet(spec)
		if err != nil || n.QueuePairs() != pairs {
			t.Errorf("ParseNet(%q): %d pairs, %v; want %d", spec, n.QueuePairs(), err, pairs)
		}
	}
	for spec, want := range map[string]string{
		"tap=t,queues=0":                   "queues=\"0\": give the number of receive/transmit queue pairs, 1 to 64",
		"tap=t,queues=65":                  "1 to 64",
		"tap=t,queues=x":                   "1 to 64",
		"tap=t,queues=2,num_queues=8":      "queues=2 and num_queues=8 disagree",
		"tap=t,num_queues=5":               "give an even number",
		"user=on,queues=2":                 "2 queue pairs need a TAP back-end",
		"socket=/s,queues=4":               "need a TAP back-end",
		"tap=t,queues=4,firewall=/r":       "firewall, pcap and ids",
		"tap=t,queues=4,model=e1000":       "",
		"vhost_user=on,socket=/s,queues=2": "",
	} {
		n, err := ParseNet(spec)
		if want == "" {
			// Accepted by the parser, refused by Validate (an e1000, a
			// vhost-user NIC: one pair each).
			cfg := Default()
			cfg.Payload.Kernel = "/dev/null"
			cfg.Memory.Shared = true
			cfg.Net = []Net{n}
			if err != nil || cfg.Validate() == nil || !strings.Contains(cfg.Validate().Error(), "one queue pair") {
				t.Errorf("ParseNet(%q): %v, then Validate: %v", spec, err, cfg.Validate())
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseNet(%q): %v, want an error about %q", spec, err, want)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "vm.json")
	os.WriteFile(good, []byte(`{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":2},"memory":{"size":1073741824},
		"disks":[{"path":"a.img","readonly":true}],"net":[{"tap":"tap0"}]}`), 0o644)
	c, err := Load(good)
	if err != nil || c.CPUs.BootVCPUs != 2 || c.Memory.Size != 1<<30 || len(c.Disks) != 1 || !c.Disks[0].Readonly || c.Serial.Mode != ModeTty {
		t.Fatalf("Load: %+v %v", c, err)
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"payload":{"kernal":"/k"}}`), 0o644)
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), "kernal") {
		t.Errorf("a misspelt field must be an error, got %v", err)
	}
}

// FuzzDecode: any bytes a config file or an API client sends either decode
// into a config that Validate can judge, or give an error; never a panic.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":2,"topology":{"packages":2}},"memory":{"size":1073741824,"thp":false}}`))
	f.Add([]byte(`{"vsock":{"cid":3,"socket":"/s"},"platform":{"num_pci_segments":2},"fs":[{"tag":"t"}]}`))
	f.Add([]byte(`{"payload":`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Decode(b)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error without a sentence")
			}
			return
		}
		c.Validate()
		c.Unimplemented()
		c.Clone()
	})
}

// The disk format: format= on the command line, image_type in JSON, both
// with Cloud Hypervisor's values; a wrong one is one sentence naming it.
func TestDiskFormat(t *testing.T) {
	for spec, want := range map[string]Disk{
		"path=a,format=raw":                 {Path: "a", ImageType: ImageRaw},
		"path=a,format=qcow2":               {Path: "a", ImageType: ImageQcow2},
		"path=a,format=QCOW2,backing=allow": {Path: "a", ImageType: ImageQcow2, AllowBacking: true},
		"path=a":                            {Path: "a"},
	} {
		if d, err := ParseDisk(spec); err != nil || !reflect.DeepEqual(d, want) {
			t.Errorf("ParseDisk(%q) = %+v, %v; want %+v", spec, d, err, want)
		}
	}
	for spec, want := range map[string]string{
		"path=a,format=vmdk":      `disk format "vmdk" is not one vio opens: give raw or qcow2`,
		"path=a,format=":          `disk format "" is not one vio opens`,
		"path=a,backing=yes":      `backing="yes": the only value is allow`,
		"path=a,format=raw,x=1":   `unknown key "x" (want path, iface, format, backing,`,
		"path=a,format=raw,raw=1": `unknown key "raw"`,
	} {
		_, err := ParseDisk(spec)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseDisk(%q): %v, want one line containing %q", spec, err, want)
		}
	}
	dir := t.TempDir()
	kernel := filepath.Join(dir, "k")
	os.WriteFile(kernel, []byte("x"), 0o644)
	for typ, ok := range map[string]bool{"": true, "Unknown": true, "Raw": true, "Qcow2": true, "raw": false, "Vhdx": false} {
		cfg := Default()
		cfg.Payload.Kernel = kernel
		cfg.Disks = []Disk{{Path: "d", ImageType: typ}}
		err := cfg.Validate()
		if ok != (err == nil) {
			t.Errorf("image_type %q: %v", typ, err)
		}
		if err != nil && !strings.Contains(err.Error(), `image_type "`+typ+`": want "Raw" or "Qcow2"`) {
			t.Errorf("image_type %q: message %q", typ, err)
		}
	}
	js := filepath.Join(dir, "vm.json")
	os.WriteFile(js, []byte(`{"payload":{"kernel":"/k"},"disks":[{"path":"a.img","image_type":"Qcow2","allow_backing":true}]}`), 0o644)
	c, err := Load(js)
	if err != nil || c.Disks[0].ImageType != ImageQcow2 || !c.Disks[0].AllowBacking {
		t.Errorf("Load image_type: %+v, %v", c, err)
	}
}

func TestParseMemory(t *testing.T) {
	for in, want := range map[string]Memory{
		"1G":                   {Size: 1 << 30},
		"size=512M":            {Size: 512 << 20},
		"size=1G,shared=on":    {Size: 1 << 30, Shared: true},
		"shared=off,size=2G":   {Size: 2 << 30},
		"size=64M,shared=true": {Size: 64 << 20, Shared: true},
	} {
		got, err := ParseMemory(in)
		if err != nil || got != want {
			t.Errorf("ParseMemory(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for bad, says := range map[string]string{
		"":                     "does not parse",
		"1X":                   "does not parse",
		"shared=on":            "size= is missing",
		"size=1G,shared=yes!":  "want on or off",
		"size=1G,hugepages=on": "unknown key",
		"size=1G,size=2G":      "given twice",
		"size=x":               "does not parse",
	} {
		_, err := ParseMemory(bad)
		if err == nil || !strings.Contains(err.Error(), says) || !strings.HasPrefix(err.Error(), "--memory") {
			t.Errorf("ParseMemory(%q) = %v; want an error about --memory saying %q", bad, err, says)
		}
	}
}

// memory.shared is honoured now: it must not be reported as ignored.
func TestSharedMemoryIsHonoured(t *testing.T) {
	c := Default()
	c.Memory.Shared = true
	for _, w := range c.Unimplemented() {
		if strings.Contains(w, "shared") {
			t.Errorf("memory.shared reported as ignored: %q", w)
		}
	}
}

// TestDiskVirtualFunctions: vfs= lists an SR-IOV disk's VF images; bad
// ones are refused in one sentence.
func TestDiskVirtualFunctions(t *testing.T) {
	d, err := ParseDisk("path=pf.img,vfs=a.img+b.img")
	if err != nil {
		t.Fatal(err)
	}
	if want := []Disk{{Path: "a.img"}, {Path: "b.img"}}; !reflect.DeepEqual(d.VirtualFunctions, want) {
		t.Errorf("VFs %+v, want %+v", d.VirtualFunctions, want)
	}
	if _, err := ParseDisk("path=pf.img,vfs=a.img++b.img"); err == nil || !strings.Contains(err.Error(), "empty image path") {
		t.Errorf("an empty VF path: %v", err)
	}
	kernel := filepath.Join(t.TempDir(), "k")
	os.WriteFile(kernel, []byte("x"), 0o644)
	eight := Disk{Path: "pf"}
	for range 8 {
		eight.VirtualFunctions = append(eight.VirtualFunctions, Disk{Path: "x"})
	}
	for want, disk := range map[string]Disk{
		"at most 7":                      eight,
		"only a virtio disk":             {Path: "pf", Iface: DiskIDE, VirtualFunctions: []Disk{{Path: "a"}}},
		"virtual function 0 has no path": {Path: "pf", VirtualFunctions: []Disk{{}}},
		"of its own":                     {Path: "pf", VirtualFunctions: []Disk{{Path: "a", VirtualFunctions: []Disk{{Path: "b"}}}}},
		"a VF is a plain image":          {Path: "pf", VirtualFunctions: []Disk{{Path: "a", RateLimitGroup: "g"}}},
	} {
		c := Default()
		c.Payload.Kernel = kernel
		c.Disks = []Disk{disk}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", want, err)
		}
	}
}

// dns_upstream= is a user-mode network's key: kept as given (vmm checks
// the address), refused without user=on.
func TestParseNetDNSUpstream(t *testing.T) {
	n, err := ParseNet("user=on,dns_upstream=127.0.0.1:5353")
	if err != nil || n.User == nil || n.User.DNSUpstream != "127.0.0.1:5353" {
		t.Fatalf("%+v, %v", n.User, err)
	}
	if _, err := ParseNet("tap=t,dns_upstream=127.0.0.1"); err == nil || !strings.Contains(err.Error(), "dns_upstream= belongs to user-mode networking: add user=on") {
		t.Errorf("dns_upstream on a TAP: %v", err)
	}
}

// TestFailoverConfig: --net standby=on and --device failover=NETID parse,
// and each pairing a guest's net_failover could not use is refused in
// one sentence.
func TestFailoverConfig(t *testing.T) {
	n, err := ParseNet("tap=t0,mac=52:54:00:12:34:56,id=sb,standby=on")
	if err != nil || !n.Standby || n.ID != "sb" {
		t.Fatalf("ParseNet standby=on: %+v, %v", n, err)
	}
	if _, err := ParseNet("tap=t0,standby=maybe"); err == nil || !strings.Contains(err.Error(), "standby") {
		t.Errorf("standby=maybe: %v", err)
	}
	d, err := ParseDevice("path=/sys/bus/pci/devices/0000:00:05.0,id=vf,failover=sb")
	if err != nil || d.Failover != "sb" || d.ID != "vf" {
		t.Fatalf("ParseDevice failover=sb: %+v, %v", d, err)
	}
	if _, err := ParseDevice("path=/sys/bus/pci/devices/0000:00:05.0,failover="); err == nil || !strings.Contains(err.Error(), "id of the standby NIC") {
		t.Errorf("failover= with no id: %v", err)
	}

	dir := t.TempDir()
	kernel := filepath.Join(dir, "k")
	os.WriteFile(kernel, []byte("x"), 0o644)
	const mac = "52:54:00:12:34:56"
	primary := func(sb string) Device { return Device{Path: "/sys/bus/pci/devices/0000:00:05.0", Failover: sb} }
	for _, c := range []struct {
		net     []Net
		devices []Device
		want    string // "" for a valid config
	}{
		{[]Net{{Tap: "t", MAC: mac, ID: "sb", Standby: true}}, []Device{primary("sb")}, ""},
		// A standby alone is fine: the guest runs on it until a primary comes.
		{[]Net{{Tap: "t", MAC: mac, Standby: true}}, nil, ""},
		{[]Net{{Tap: "t", MAC: mac, ID: "sb", Standby: true, Model: NetE1000}}, nil, "an e1000 does not have"},
		{[]Net{{VhostUser: true, VhostSocket: "/s", MAC: mac, Standby: true}}, nil, "vhost-user NIC offers the features of its back-end"},
		{[]Net{{Tap: "t0", VhostNet: true, MAC: mac, Standby: true}}, nil, "vhost-net NIC cannot be a standby"},
		{[]Net{{Tap: "t", ID: "sb", Standby: true}}, nil, "needs mac= set to the MAC address of its pass-through primary"},
		{[]Net{{Tap: "t", MAC: mac, ID: "sb", Standby: true}}, []Device{primary("other")}, "failover=other names no NIC"},
		{[]Net{{Tap: "t", MAC: mac, ID: "sb"}}, []Device{primary("sb")}, "NIC sb is not a standby: add standby=on"},
		{[]Net{{Tap: "t", MAC: mac, ID: "sb", Standby: true}},
			[]Device{primary("sb"), {Path: "/sys/bus/pci/devices/0000:00:06.0", Failover: "sb"}}, "0000:00:05.0 and 0000:00:06.0 both name NIC sb"},
	} {
		cfg := Default()
		cfg.Payload.Kernel = kernel
		cfg.Memory.Shared = true // for the vhost-user case
		cfg.Net, cfg.Devices = c.net, c.devices
		err := cfg.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v %+v: %v", c.net, c.devices, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v %+v: want an error about %q, got %v", c.net, c.devices, c.want, err)
		}
	}
}
