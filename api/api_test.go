package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/vfio"
	"github.com/viovmm/vio/vmm"
)

// kataCreateBody is a vm.create body shaped like the one Kata Containers'
// clh driver sends: every field its generated client fills in with a
// default, plus the ones the README of the description lists (two PCI
// segments, nested, a topology, memory hotplug with Acpi and thp, a
// read-only root disk, queue sizes, a vsock, virtio-fs).
func kataCreateBody(kernel string) []byte {
	return []byte(`{
  "payload": {"kernel": "` + kernel + `", "cmdline": "console=hvc0 quiet panic=1 agent.log=debug"},
  "cpus": {"boot_vcpus": 1, "max_vcpus": 4, "kvm_hyperv": false, "nested": true,
           "topology": {"threads_per_core": 1, "cores_per_die": 4, "dies_per_package": 1, "packages": 1}},
  "memory": {"size": 268435456, "hotplug_size": 4294967296, "hotplug_method": "Acpi", "thp": true,
             "shared": true, "mergeable": false, "hugepages": false, "prefault": false},
  "disks": [{"path": "/var/lib/kata/kata-containers.img", "readonly": true, "direct": false, "iommu": false,
             "num_queues": 1, "queue_size": 128, "vhost_user": false, "id": "_disk0"}],
  "rng": {"src": "/dev/urandom", "iommu": false},
  "serial": {"mode": "Off"},
  "console": {"mode": "Off", "iommu": false},
  "fs": [{"tag": "kataShared", "socket": "/run/vc/vm/x/vhost-fs.sock", "num_queues": 1, "queue_size": 1024}],
  "vsock": {"cid": 3, "socket": "/run/vc/vm/x/clh.sock", "iommu": false},
  "platform": {"num_pci_segments": 2, "tdx": false, "sev_snp": false},
  "iommu": false, "watchdog": false, "pvpanic": false
}`)
}

// TestKataSequence drives the API the way Kata's clh driver does, start
// to end, every request and answer checked against the description.
func TestKataSequence(t *testing.T) {
	v := startVMM(t)
	c := newSpecClient(t, v.sock)

	// Kata polls vmm.ping every 10 ms until the socket answers.
	var ping struct {
		Version string `json:"version"`
		PID     int    `json:"pid"`
	}
	json.Unmarshal(c.ok("GET", "vmm.ping", nil, 200).body, &ping)
	if ping.PID != os.Getpid() || !strings.HasPrefix(ping.Version, "vio v") {
		t.Fatalf("vmm.ping: %+v", ping)
	}

	c.ok("PUT", "vm.create", kataCreateBody(v.kernel), 204)
	cfg := c.state(vmm.StateCreated)
	// Kata dereferences config.cpus and config.memory when it resizes.
	cpus, _ := cfg["cpus"].(map[string]any)
	mem, _ := cfg["memory"].(map[string]any)
	if cpus["boot_vcpus"] != 1.0 || cpus["max_vcpus"] != 4.0 || mem["size"] != 268435456.0 {
		t.Fatalf("vm.info config does not echo cpus and memory: %v %v", cpus, mem)
	}
	// A NIC by name before boot joins the config (Kata passes an fd
	// instead; see TestAddNetFDs).
	c.ok("PUT", "vm.add-net", []byte(`{"tap": "tap0", "num_queues": 2, "queue_size": 256, "mac": "52:54:00:12:34:56"}`), 204)
	c.ok("PUT", "vm.boot", nil, 204)
	c.state(vmm.StateRunning)
	m := v.builder.Last()
	if m == nil || len(m.Config.Net) != 1 || m.Config.Net[0].Tap != "tap0" || m.Config.Platform.NumPCISegments != 2 {
		t.Fatalf("the VM was not built from the config sent: %+v", m)
	}
	c.ok("PUT", "vm.pause", nil, 204)
	c.state(vmm.StatePaused)
	if !m.Paused() {
		t.Fatal("vm.pause did not pause the VM")
	}
	c.ok("PUT", "vm.resume", nil, 204)
	c.state(vmm.StateRunning)
	var counters map[string]map[string]int64
	json.Unmarshal(c.ok("GET", "vm.counters", nil, 200).body, &counters)
	if counters["vcpu0"]["pauses"] != 1 {
		t.Fatalf("vm.counters %v", counters)
	}
	c.ok("PUT", "vm.shutdown", nil, 204)
	c.state(vmm.StateShutdown)
	if !m.Closed() {
		t.Fatal("vm.shutdown returned before the VM was released")
	}
	c.ok("PUT", "vmm.shutdown", nil, 204)
	select {
	case err := <-v.served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the server still serves 3 s after vmm.shutdown (Kata's limit)")
	}
	if c.reused == 0 {
		t.Error("no request reused the connection: keep-alive does not work")
	}
	if _, err := os.Stat(v.sock); !os.IsNotExist(err) {
		t.Errorf("the socket file outlives the server: %v", err)
	}
}

// Bad requests get a 4xx with a sentence, and the server keeps serving.
func TestBadRequests(t *testing.T) {
	v := startVMM(t)
	c := newSpecClient(t, v.sock)
	good := kataCreateBody(v.kernel)
	big := append([]byte(`{"payload":{"kernel":"`+v.kernel+`","cmdline":"`), bytes.Repeat([]byte("x"), api.MaxBody)...)
	big = append(big, `"}}`...)
	for _, tc := range []struct {
		name, method, endpoint string
		body                   []byte
		status                 int
		says                   string
	}{
		{"info before create", "GET", "vm.info", nil, 404, "vm.create first"},
		{"boot before create", "PUT", "vm.boot", nil, 404, "vm.create first"},
		{"unknown field", "PUT", "vm.create", []byte(`{"payload":{"kernel":"` + v.kernel + `"},"bogus":1}`), 400, `unknown field "bogus"`},
		{"unknown nested field", "PUT", "vm.create", []byte(`{"payload":{"kernel":"` + v.kernel + `"},"cpus":{"boot_vcpus":1,"max_vcpus":1,"turbo":true}}`), 400, `"turbo"`},
		{"malformed", "PUT", "vm.create", []byte(`{"payload": {"kernel": `), 400, "ends early"},
		{"not JSON", "PUT", "vm.create", []byte(`kernel=/boot/vmlinuz`), 400, "malformed JSON"},
		{"wrong type", "PUT", "vm.create", []byte(`{"payload":{"kernel":"` + v.kernel + `"},"cpus":{"boot_vcpus":"two","max_vcpus":2}}`), 400, "cpus.boot_vcpus has the wrong type"},
		{"two objects", "PUT", "vm.create", append(append([]byte{}, good...), good...), 400, "followed by more data"},
		{"empty body", "PUT", "vm.create", []byte{}, 400, "needs a JSON body"},
		{"oversized", "PUT", "vm.create", big, 413, "larger than"},
		{"missing kernel", "PUT", "vm.create", []byte(`{"payload":{"cmdline":"quiet"}}`), 400, "no kernel given"},
		{"refused field", "PUT", "vm.create", []byte(`{"payload":{"kernel":"` + v.kernel + `"},"platform":{"tdx":true}}`), 400, "confidential"},
		{"create", "PUT", "vm.create", good, 204, ""},
		{"create twice", "PUT", "vm.create", good, 405, "exists already"},
		{"pause before boot", "PUT", "vm.pause", nil, 405, "vm.boot first"},
		{"boot", "PUT", "vm.boot", nil, 204, ""},
		{"resume while running", "PUT", "vm.resume", nil, 405, "running, not paused"},
		{"add-disk unknown field", "PUT", "vm.add-disk", []byte(`{"path":"/tmp/x.img","speed":9}`), 400, `"speed"`},
		{"add-disk duplicate id", "PUT", "vm.add-disk", []byte(`{"path":"/tmp/x.img","id":"_disk0"}`), 409, `"_disk0"`},
		{"add-disk no path", "PUT", "vm.add-disk", []byte(`{"id":"d9"}`), 400, "no path"},
		{"remove-device unknown id", "PUT", "vm.remove-device", []byte(`{"id":"nope"}`), 404, `"nope"`},
		{"remove-device without id", "PUT", "vm.remove-device", []byte(`{}`), 400, "needs the id"},
		{"wrong method", "GET", "vm.boot", nil, 405, "takes PUT"},
		{"unknown endpoint", "GET", "vm.everything", nil, 404, "no such endpoint"},
		{"outside the API", "GET", "metrics", nil, 404, "/api/v1/"},
		{"snapshot while running", "PUT", "vm.snapshot", []byte(`{"destination_url":"file:///tmp/s"}`), 405, "vm.pause first"},
		{"snapshot without a URL", "PUT", "vm.snapshot", []byte(`{}`), 400, "destination_url"},
		{"restore with a VM", "PUT", "vm.restore", []byte(`{"source_url":"file:///tmp/s"}`), 405, "has a VM already"},
		{"restore mode", "PUT", "vm.restore", []byte(`{"source_url":"file:///tmp/s","memory_restore_mode":"Lazy"}`), 400, "Copy or OnDemand"},
		{"resize without a balloon", "PUT", "vm.resize", []byte(`{"desired_balloon":1048576}`), 400, "no balloon"},
		{"resize vcpus", "PUT", "vm.resize", []byte(`{"desired_vcpus":2}`), 501, "vCPU hotplug"},
		{"resize unknown field", "PUT", "vm.resize", []byte(`{"desired_balloon_size":0}`), 400, `"desired_balloon_size"`},
		{"pause", "PUT", "vm.pause", nil, 204, ""},
		{"snapshot to a bad URL", "PUT", "vm.snapshot", []byte(`{"destination_url":"/tmp/s"}`), 400, "file:///"},
		{"remove-device while paused", "PUT", "vm.remove-device", []byte(`{"id":"_disk0"}`), 405, "vm.resume"},
		{"send-migration without a URL", "PUT", "vm.send-migration", []byte(`{}`), 400, "destination_url"},
		{"send-migration to a bad URL", "PUT", "vm.send-migration", []byte(`{"destination_url":"http://h:1"}`), 400, "tcp:HOST:PORT"},
		{"send-migration local of a double", "PUT", "vm.send-migration", []byte(`{"destination_url":"unix:/tmp/m","local":true}`), 501, "cannot migrate"}, // its RAM is shared: it gets as far as the Machine
		{"send-migration local over TCP", "PUT", "vm.send-migration", []byte(`{"destination_url":"tcp:h:1","local":true}`), 400, "UNIX socket"},
		{"send-migration local with connections", "PUT", "vm.send-migration", []byte(`{"destination_url":"unix:/tmp/m","local":true,"connections":2}`), 501, "one connection"},
		{"send-migration TLS without credentials", "PUT", "vm.send-migration", []byte(`{"destination_url":"tcp:h:1","tls_dir":"/nonexistent"}`), 400, "has no ca-cert.pem"},
		{"send-migration TLS over UNIX", "PUT", "vm.send-migration", []byte(`{"destination_url":"unix:/tmp/m","tls_dir":"/nonexistent"}`), 400, "TLS is for tcp"},
		{"send-migration postcopy", "PUT", "vm.send-migration", []byte(`{"destination_url":"tcp:h:1","memory_mode":"Postcopy"}`), 501, "Precopy"},
		{"send-migration connections", "PUT", "vm.send-migration", []byte(`{"destination_url":"tcp:h:1","connections":4}`), 501, "one connection"},
		{"send-migration downtime", "PUT", "vm.send-migration", []byte(`{"destination_url":"tcp:h:1","downtime_ms":0}`), 400, "downtime_ms"},
		{"send-migration strategy", "PUT", "vm.send-migration", []byte(`{"destination_url":"tcp:h:1","timeout_strategy":"Pray"}`), 400, "Cancel or Ignore"},
		{"send-migration of a double", "PUT", "vm.send-migration", []byte(`{"destination_url":"unix:/nonexistent/m.sock"}`), 501, "cannot migrate"},
		{"send-migration copy_disks not a list", "PUT", "vm.send-migration", []byte(`{"destination_url":"tcp:h:1","copy_disks":"d0"}`), 400, "copy_disks: give true"},
		{"send-migration copy_disks empty", "PUT", "vm.send-migration", []byte(`{"destination_url":"tcp:h:1","copy_disks":[]}`), 400, "non-empty list"},
		{"send-migration copy_disks local", "PUT", "vm.send-migration", []byte(`{"destination_url":"unix:/tmp/m","local":true,"copy_disks":true}`), 400, "a local migration does not copy disks"},
		{"send-migration copy_disks of a double", "PUT", "vm.send-migration", []byte(`{"destination_url":"unix:/nonexistent/m.sock","copy_disks":["d0"]}`), 501, "cannot migrate"},
		{"receive-migration disk_paths empty path", "PUT", "vm.receive-migration", []byte(`{"receiver_url":"tcp:127.0.0.1:0","disk_paths":{"d0":""}}`), 400, "disk_paths maps disk ids"},
		{"receive-migration without a URL", "PUT", "vm.receive-migration", []byte(`{}`), 400, "receiver_url"},
		{"receive-migration device_paths empty path", "PUT", "vm.receive-migration", []byte(`{"receiver_url":"tcp:127.0.0.1:0","device_paths":{"vf0":""}}`), 400, "device_paths maps failover primaries' ids"},
		{"send-migration unplug_timeout_s 0", "PUT", "vm.send-migration", []byte(`{"destination_url":"tcp:h:1","unplug_timeout_s":0}`), 400, "unplug_timeout_s 0: want 1 to 3600"},
		{"receive-migration TLS over UNIX", "PUT", "vm.receive-migration", []byte(`{"receiver_url":"unix:/tmp/m","tls_dir":"/nonexistent"}`), 400, "TLS is for tcp"},
		{"not yet", "PUT", "vm.coredump", []byte(`{"destination_url":"file:///tmp/s"}`), 501, "not implemented"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := c.do(tc.method, tc.endpoint, tc.body)
			if a.status != tc.status || !strings.Contains(a.errorSentence(), tc.says) {
				t.Fatalf("status %d %q, want %d saying %q", a.status, a.body, tc.status, tc.says)
			}
			// The server keeps serving.
			c.ok("GET", "vmm.ping", nil, 200)
		})
	}
}

// The socket is 0600, a stale one is replaced, anything else is refused.
func TestListen(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	l, err := api.Listen(sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(sock)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v (%v), want 0600", st.Mode(), err)
	}
	if _, err := api.Listen(sock, nil); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("a second server on a live socket: %v", err)
	}
	// A socket left by a dead process (the file stays when the listener
	// goes without removing it).
	raw, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "stale.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	raw.SetUnlinkOnClose(false)
	raw.Close()
	l2, err := api.Listen(filepath.Join(dir, "stale.sock"), nil)
	if err != nil {
		t.Fatalf("a stale socket was not replaced: %v", err)
	}
	l2.Close()
	plain := filepath.Join(dir, "file")
	os.WriteFile(plain, nil, 0o644)
	if _, err := api.Listen(plain, nil); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("a regular file in the way: %v", err)
	}
	l.Close()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("Close left the socket file: %v", err)
	}
}

// sendWithFD writes an HTTP request on a new connection with fd attached
// to its first bytes (as Kata's add-net does) and returns the connection
// and the answer's status line.
func sendWithFD(t *testing.T, sock, request string, fd int) (*net.UnixConn, string) {
	t.Helper()
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := conn.WriteMsgUnix([]byte(request), unix.UnixRights(fd), nil); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return conn, string(buf[:n])
}

// pipeClosedElsewhere reports whether every copy of w's write end but
// ours has been closed: closing ours then gives r an EOF.
func waitEOF(t *testing.T, r *os.File) {
	t.Helper()
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if n, err := r.Read(b[:]); n != 0 || err == nil || !strings.Contains(err.Error(), "EOF") {
		t.Fatalf("read %d, %v: the server still holds the passed descriptor", n, err)
	}
}

// addNetRequest is an HTTP request for vm.add-net with body.
func addNetRequest(body string) string {
	return "PUT /api/v1/vm.add-net HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: " +
		itoa(len(body)) + "\r\n\r\n" + body
}

// Descriptors passed with SCM_RIGHTS reach the add-net handler and go to
// the Controller with the NIC (cold before boot, hot-plugged after, with
// a PciDeviceInfo answer), which closes them when the NIC goes; a request
// refused closes them at once, and descriptors no request takes are
// closed with their connection.
func TestAddNetFDs(t *testing.T) {
	v := startVMM(t)
	c := newSpecClient(t, v.sock)
	// Kata's NIC: no tap name, the fd, two queues (one pair).
	c.ok("PUT", "vm.create", kataCreateBody(v.kernel), 204)
	body := `{"num_queues":2,"queue_size":256,"ip":"10.0.0.1","mask":"255.255.255.0","mac":"52:54:00:aa:bb:cc","id":"kata0"}`
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	conn, status := sendWithFD(t, v.sock, addNetRequest(body), int(w.Fd()))
	if !strings.HasPrefix(status, "HTTP/1.1 204") {
		t.Fatalf("cold add-net with a descriptor: %q", status)
	}
	conn.Close()
	w.Close()
	c.ok("PUT", "vm.boot", nil, 204)
	m := v.builder.Last()
	if len(m.Config.Net) != 1 || len(m.Config.Net[0].TapFDs) != 1 || m.Config.Net[0].ID != "kata0" {
		t.Fatalf("the VM was built with NICs %+v, want kata0 on one descriptor", m.Config.Net)
	}
	// No num_queues given: one pair per descriptor, in Cloud
	// Hypervisor's count of both directions.
	if n := m.Config.Net[0]; n.NumQueues != 2 || n.QueuePairs() != 1 {
		t.Errorf("a NIC on one descriptor has num_queues %d (%d pairs), want 2 (1)", n.NumQueues, n.QueuePairs())
	}

	// Hot plug: 200 with {id, bdf}.
	r2, w2, _ := os.Pipe()
	defer r2.Close()
	conn, status = sendWithFD(t, v.sock, addNetRequest(`{"id":"kata1"}`), int(w2.Fd()))
	if !strings.HasPrefix(status, "HTTP/1.1 200") || !strings.Contains(status, `{"id":"kata1","bdf":"0000:00:01.0"}`) {
		t.Fatalf("hot add-net with a descriptor: %q", status)
	}
	conn.Close()
	w2.Close()
	c.ok("PUT", "vm.remove-device", []byte(`{"id":"kata1"}`), 204)
	waitEOF(t, r2) // the removed NIC's descriptor is closed
	c.ok("PUT", "vm.remove-device", []byte(`{"id":"kata0"}`), 204)
	waitEOF(t, r)

	// A refused request closes what it was sent.
	r3, w3, _ := os.Pipe()
	defer r3.Close()
	conn, status = sendWithFD(t, v.sock, addNetRequest(`{"num_queues":4}`), int(w3.Fd()))
	if !strings.HasPrefix(status, "HTTP/1.1 400") || !strings.Contains(status, "send num_queues 2") {
		t.Fatalf("add-net with num_queues not matching its descriptors: %q", status)
	}
	w3.Close()
	waitEOF(t, r3)
	conn.Close()

	// A descriptor sent with a request that does not take one is closed
	// when the connection is.
	r4, w4, _ := os.Pipe()
	defer r4.Close()
	conn, status = sendWithFD(t, v.sock, "GET /api/v1/vm.info HTTP/1.1\r\nHost: localhost\r\n\r\n", int(w4.Fd()))
	if !strings.HasPrefix(status, "HTTP/1.1 200") {
		t.Fatalf("vm.info: %q", status)
	}
	w4.Close()
	conn.Close()
	waitEOF(t, r4)
	c.ok("GET", "vmm.ping", nil, 200)
}

// TestHotplugAPI: vm.add-disk on a running VM answers 200 with a
// PciDeviceInfo (checked against the description), vm.info shows the
// disk, vm.remove-device takes it away; a guest that does not release a
// device gets the client a 504 with a sentence.
func TestHotplugAPI(t *testing.T) {
	v := startVMM(t)
	c := newSpecClient(t, v.sock)
	c.ok("PUT", "vm.create", kataCreateBody(v.kernel), 204)
	c.ok("PUT", "vm.add-disk", []byte(`{"path":"/tmp/cold.img"}`), 204)
	c.ok("PUT", "vm.boot", nil, 204)
	var info struct{ ID, BDF string }
	if err := json.Unmarshal(c.ok("PUT", "vm.add-disk", []byte(`{"path":"/tmp/hot.img","id":"hot0"}`), 200).body, &info); err != nil {
		t.Fatal(err)
	}
	if info.ID != "hot0" || info.BDF != "0000:00:01.0" {
		t.Fatalf("PciDeviceInfo %+v", info)
	}
	disks := func() []any {
		d, _ := c.state(vmm.StateRunning)["disks"].([]any)
		return d
	}
	// Kata's config has a disk already: it is _disk0, the cold one _disk1.
	if d := disks(); len(d) != 3 || d[1].(map[string]any)["id"] != "_disk1" || d[2].(map[string]any)["id"] != "hot0" {
		t.Fatalf("vm.info disks %v", d)
	}
	c.ok("PUT", "vm.remove-device", []byte(`{"id":"hot0"}`), 204)
	if d := disks(); len(d) != 2 {
		t.Fatalf("vm.info disks after removal %v", d)
	}
	v.builder.Last().HoldEjects()
	v.ctl.SetEjectWait(time.Millisecond)
	a := c.do("PUT", "vm.remove-device", []byte(`{"id":"_disk0"}`))
	if a.status != 504 || !strings.Contains(a.errorSentence(), "did not release") {
		t.Fatalf("removing a device the guest holds: %d %q", a.status, a.body)
	}
	v.builder.Last().ReleaseHeld()
	// The 1 ms wait was for the device the guest held; a released one's
	// eject runs on another goroutine and may take longer than that on a
	// loaded machine (a suite pass saw _vsock0's removal time out below).
	v.ctl.SetEjectWait(vmm.DefaultEjectWait)

	// One vsock device per VM (Kata's config has one: _vsock0),
	// removed and hot-plugged like the others.
	if a := c.do("PUT", "vm.add-vsock", []byte(`{"cid":4,"socket":"/tmp/w.sock"}`)); a.status != 400 || !strings.Contains(a.errorSentence(), "one at most") {
		t.Fatalf("a second vsock device: %d %q", a.status, a.body)
	}
	c.ok("PUT", "vm.remove-device", []byte(`{"id":"_vsock0"}`), 204)
	if vs := c.state(vmm.StateRunning)["vsock"]; vs != nil {
		t.Fatalf("vm.info vsock after removal %v", vs)
	}
	if err := json.Unmarshal(c.ok("PUT", "vm.add-vsock", []byte(`{"cid":3,"socket":"/tmp/v.sock","id":"vs1"}`), 200).body, &info); err != nil {
		t.Fatal(err)
	}
	if info.ID != "vs1" || info.BDF == "" {
		t.Fatalf("vsock PciDeviceInfo %+v", info)
	}
	if vs, _ := c.state(vmm.StateRunning)["vsock"].(map[string]any); vs["id"] != "vs1" {
		t.Fatalf("vm.info vsock %v", vs)
	}
}

// TestAddDeviceAPI: vm.add-device takes Cloud Hypervisor's DeviceConfig
// (and vio's failover), cold (204) and hot (200 with PciDeviceInfo, both
// checked against the description); vm.info lists the devices with their
// ids, vm.remove-device removes one; each refusal is one sentence with
// its status.
func TestAddDeviceAPI(t *testing.T) {
	v := startVMM(t)
	c := newSpecClient(t, v.sock)
	c.ok("PUT", "vm.create", kataCreateBody(v.kernel), 204)
	c.ok("PUT", "vm.add-net", []byte(`{"tap":"tap0","mac":"52:54:00:12:34:56","id":"sb","standby":true}`), 204)
	c.ok("PUT", "vm.add-device", []byte(`{"path":"/sys/bus/pci/devices/0000:00:05.0","id":"vf0","failover":"sb"}`), 204)
	c.ok("PUT", "vm.boot", nil, 204)
	var info struct{ ID, BDF string }
	if err := json.Unmarshal(c.ok("PUT", "vm.add-device", []byte(`{"path":"/sys/bus/pci/devices/0000:00:06.0/"}`), 200).body, &info); err != nil {
		t.Fatal(err)
	}
	if info.ID != "_vfio0" || info.BDF == "" {
		t.Fatalf("PciDeviceInfo %+v", info)
	}
	if got := v.builder.Last().PassedThrough()["_vfio0"]; got != "/sys/bus/pci/devices/0000:00:06.0" {
		t.Fatalf("the VM passed %q through, want the device's path without its slash", got)
	}
	devices := func() []any {
		d, _ := c.state(vmm.StateRunning)["devices"].([]any)
		return d
	}
	if d := devices(); len(d) != 2 || d[0].(map[string]any)["failover"] != "sb" || d[1].(map[string]any)["id"] != "_vfio0" {
		t.Fatalf("vm.info devices %v", d)
	}
	v.builder.Last().RefuseDevice("/sys/bus/pci/devices/0000:00:07.0", fmt.Errorf("%w: 0000:00:07.0 has driver e1000e; bind it with: modprobe vfio-pci", vfio.ErrNotBound))
	for _, tc := range []struct {
		name, body string
		status     int
		says       string
	}{
		{"no path", `{"id":"x"}`, 400, "needs path"},
		{"not a PCI address", `{"path":"/sys/bus/pci/devices/eth0"}`, 400, "does not end in a PCI address"},
		{"unknown standby", `{"path":"/sys/bus/pci/devices/0000:00:08.0","failover":"nope"}`, 400, "failover=nope names no NIC"},
		{"same device twice", `{"path":"/sys/bus/pci/devices/0000:00:06.0"}`, 400, "name one host device"},
		{"duplicate id", `{"path":"/sys/bus/pci/devices/0000:00:08.0","id":"vf0"}`, 409, `"vf0"`},
		{"unknown field", `{"path":"/sys/bus/pci/devices/0000:00:08.0","speed":1}`, 400, `"speed"`},
		{"not bound to vfio-pci", `{"path":"/sys/bus/pci/devices/0000:00:07.0"}`, 400, "bind it with"},
	} {
		a := c.do("PUT", "vm.add-device", []byte(tc.body))
		if a.status != tc.status || !strings.Contains(a.errorSentence(), tc.says) {
			t.Errorf("%s: status %d %q, want %d saying %q", tc.name, a.status, a.body, tc.status, tc.says)
		}
	}
	if a := c.do("PUT", "vm.remove-device", []byte(`{"id":"sb"}`)); a.status != 400 || !strings.Contains(a.errorSentence(), "standby of failover primary vf0") {
		t.Errorf("removing the standby of a primary: %d %q", a.status, a.body)
	}
	c.ok("PUT", "vm.remove-device", []byte(`{"id":"_vfio0"}`), 204)
	if d := devices(); len(d) != 1 {
		t.Fatalf("vm.info devices after removal %v", d)
	}
	if _, ok := v.builder.Last().PassedThrough()["_vfio0"]; ok {
		t.Error("the removed device is still passed through")
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// A peer running as another user is refused before HTTP (SO_PEERCRED),
// even when the socket's mode would let it connect.
func TestPeerUID(t *testing.T) {
	if os.Getenv("VIO_API_PEER_SOCK") != "" {
		// The child: as another user, try one request.
		cl := api.NewClient(os.Getenv("VIO_API_PEER_SOCK"))
		_, err := cl.Do(t.Context(), http.MethodGet, "vmm.ping", nil)
		if err == nil {
			t.Fatal("a peer with another uid was answered")
		}
		return
	}
	if os.Getuid() != 0 {
		t.Skip("needs root to run a peer as another user")
	}
	// A directory the other user can reach, for the socket and a copy
	// of this test binary.
	dir, err := os.MkdirTemp("", "vio-api-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	v := startVMMIn(t, dir)
	os.Chmod(v.sock, 0o666)
	cmd := execSelf(t, dir, "TestPeerUID", "VIO_API_PEER_SOCK="+v.sock, 65534)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the peer as uid 65534: %v\n%s", err, out)
	}
	// Our own uid is still served.
	newSpecClient(t, v.sock).ok("GET", "vmm.ping", nil, 200)
}

// TestSnapshotRestore: vm.snapshot of a paused VM into a new directory,
// then vm.restore in a second VMM, which ends Paused with the snapshot's
// config (Running with resume=true); restoring a missing snapshot is a
// 400 that says so.
func TestSnapshotRestore(t *testing.T) {
	src := startVMM(t)
	c := newSpecClient(t, src.sock)
	c.ok("PUT", "vm.create", kataCreateBody(src.kernel), 204)
	c.ok("PUT", "vm.boot", nil, 204)
	c.ok("PUT", "vm.pause", nil, 204)
	dir := filepath.Join(t.TempDir(), "snap")
	c.ok("PUT", "vm.snapshot", []byte(`{"destination_url":"file://`+dir+`"}`), 204)
	if a := c.do("PUT", "vm.snapshot", []byte(`{"destination_url":"file://`+dir+`"}`)); a.status != 500 && a.status != 400 || !strings.Contains(a.errorSentence(), "not empty") {
		t.Errorf("snapshot into a used directory: %d %s", a.status, a.body)
	}

	dst := startVMM(t)
	d := newSpecClient(t, dst.sock)
	if a := d.do("PUT", "vm.restore", []byte(`{"source_url":"file://`+dir+`-missing"}`)); a.status != 400 || !strings.Contains(a.errorSentence(), "does not exist") {
		t.Errorf("restore of a missing snapshot: %d %s", a.status, a.body)
	}
	d.ok("PUT", "vm.restore", []byte(`{"source_url":"file://`+dir+`","prefault":false}`), 204)
	var info struct {
		State  string
		Config struct{ Payload struct{ Kernel string } }
	}
	if err := json.Unmarshal(d.ok("GET", "vm.info", nil, 200).body, &info); err != nil {
		t.Fatal(err)
	}
	if info.State != "Paused" || info.Config.Payload.Kernel != src.kernel {
		t.Errorf("after vm.restore: state %q kernel %q, want Paused and %q", info.State, info.Config.Payload.Kernel, src.kernel)
	}
	d.ok("PUT", "vm.resume", nil, 204)

	// resume=true, CH's shortcut, in a third VMM.
	third := startVMM(t)
	e := newSpecClient(t, third.sock)
	e.ok("PUT", "vm.restore", []byte(`{"source_url":"file://`+dir+`","resume":true,"memory_restore_mode":"Copy"}`), 204)
	if err := json.Unmarshal(e.ok("GET", "vm.info", nil, 200).body, &info); err != nil || info.State != "Running" {
		t.Errorf("after vm.restore with resume: %q (%v)", info.State, err)
	}
	if m := third.builder.Last(); m == nil || !m.Restored || !m.Prefault {
		t.Errorf("Copy did not ask for a prefaulted restore: %+v", m)
	}
}

// TestPowerButtonAndResizeDisk: vm.power-button presses the machine's
// button (the double's guest powers off); vm.resize-disk grows a disk of
// the running VM and refuses a request without its fields.
func TestPowerButtonAndResizeDisk(t *testing.T) {
	v := startVMM(t)
	c := newSpecClient(t, v.sock)
	c.ok("PUT", "vm.create", kataCreateBody(v.kernel), 204)
	if a := c.do("PUT", "vm.power-button", nil); a.status != 405 {
		t.Fatalf("vm.power-button before boot: %d %s", a.status, a.body)
	}
	c.ok("PUT", "vm.boot", nil, 204)
	m := v.builder.Last()
	c.ok("PUT", "vm.resize-disk", []byte(`{"id":"_disk0","desired_size":1073741824}`), 204)
	if got := m.Resized("_disk0"); got != 1<<30 {
		t.Fatalf("the machine was asked to resize _disk0 to %d", got)
	}
	if a := c.do("PUT", "vm.resize-disk", []byte(`{"id":"_disk0"}`)); a.status != 400 || !strings.Contains(a.errorSentence(), "desired_size") {
		t.Fatalf("vm.resize-disk without a size: %d %s", a.status, a.body)
	}
	if a := c.do("PUT", "vm.resize-disk", []byte(`{"id":"nope","desired_size":1}`)); a.status != 404 {
		t.Fatalf("vm.resize-disk of an unknown disk: %d %s", a.status, a.body)
	}
	c.ok("PUT", "vm.power-button", nil, 204)
	if m.Presses() != 1 {
		t.Fatalf("%d presses of the power button", m.Presses())
	}
}

// TestInterposerEndpoints: vio's own vio.disk-faults and vio.disk-throttle
// reach the running VM's graph nodes by name; a missing node is 404, a VM
// that does not run 405, a body without a node 400.
func TestInterposerEndpoints(t *testing.T) {
	v := startVMM(t)
	c := newSpecClient(t, v.sock)
	c.ok("PUT", "vm.create", kataCreateBody(v.kernel), 204)
	rules := []byte(`{"node":"f0","rules":[{"error":"EIO","offset":4096,"length":4096,"ops":"read"}]}`)
	if a := c.do("PUT", "vio.disk-faults", rules); a.status != 405 {
		t.Fatalf("vio.disk-faults before boot: %d %s", a.status, a.body)
	}
	c.ok("PUT", "vm.boot", nil, 204)
	m := v.builder.Last()
	if a := c.do("PUT", "vio.disk-faults", rules); a.status != 204 {
		t.Fatalf("vio.disk-faults: %d %s", a.status, a.body)
	}
	if got := m.Faults("f0"); len(got) != 1 || got[0].Error != "EIO" || got[0].Offset != 4096 || got[0].Ops != "read" {
		t.Fatalf("the machine got rules %+v", got)
	}
	if a := c.do("PUT", "vio.disk-faults", []byte(`{"node":"missing","rules":[]}`)); a.status != 404 {
		t.Fatalf("vio.disk-faults of a missing node: %d %s", a.status, a.body)
	}
	if a := c.do("PUT", "vio.disk-faults", []byte(`{"rules":[]}`)); a.status != 400 || !strings.Contains(a.errorSentence(), "node") {
		t.Fatalf("vio.disk-faults without a node: %d %s", a.status, a.body)
	}
	if a := c.do("PUT", "vio.disk-throttle", []byte(`{"node":"t0","bandwidth":{"size":1048576,"refill_time":1000}}`)); a.status != 204 {
		t.Fatalf("vio.disk-throttle: %d %s", a.status, a.body)
	}
	if got, ok := m.Throttled("t0"); !ok || got.Bandwidth == nil || got.Bandwidth.Size != 1<<20 {
		t.Fatalf("the machine got limits %+v", got)
	}
}
