package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/lab/labtest"
)

// The hot-plugged NIC's link: a TAP this test opens itself and hands to
// vio as a descriptor, as Kata does.
const (
	hpTap     = "viohp0"
	hpHostIP  = "169.254.102.1"
	hpGuestIP = "169.254.102.2"
	hpReadOff = 0       // the host's pattern, which the guest reads
	hpWritOff = 8 << 20 // where the guest writes its own
	hpLen     = 4 << 20
)

// hotplugGuest waits for a disk and a NIC to arrive, uses them, says so,
// then waits for both to leave. Every wait is bounded (600 rounds of
// 0.2 s); the host's deadline bounds the whole.
const hotplugGuest = `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
waitfor() { n=0; while ! eval "$1" && [ $n -lt 600 ]; do sleep 0.2; n=$((n+1)); done; eval "$1"; }
echo VIO-GUEST-UP
waitfor '[ -b /dev/vda ]'; check disk-arrived $?
echo "READSUM $(dd if=/dev/vda bs=1M count=4 2>/dev/null | sha256sum | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/w bs=1M count=4 2>/dev/null
echo "WRITESUM $(sha256sum /tmp/w | cut -d' ' -f1)"
dd if=/tmp/w of=/dev/vda bs=1M seek=8 conv=fsync 2>/dev/null; check disk-write $?
waitfor '[ -e /sys/class/net/eth0 ]'; check nic-arrived $? "$(cat /sys/class/net/eth0/address)"
ip link set eth0 up && ip addr add ` + hpGuestIP + `/24 dev eth0
timeout 60 ping -c 3 -W 5 ` + hpHostIP + ` > /dev/null; check ping $?
vs=/sys/bus/virtio/drivers/vmw_vsock_virtio_transport
waitfor 'ls $vs | grep -q virtio'; check vsock-arrived $?
echo VIO-HOTPLUG-USED
waitfor '[ "$(cat /sys/block/vda/size)" = 262144 ]'; check disk-resized $? "$(cat /sys/block/vda/size)"
echo VIO-RESIZED
waitfor '[ ! -b /dev/vda ]'; check disk-left $?
waitfor '[ ! -e /sys/class/net/eth0 ]'; check nic-left $?
waitfor '! ls $vs | grep -q virtio'; check vsock-left $?
# The ACPI core ran the hot-plug AML (_GPE._E01, PCNT, _EJ0) without complaint.
dmesg | grep -E 'ACPI (BIOS )?(Error|Warning)|AE_[A-Z]' | sed 's/^/ACPI-COMPLAINT /'
[ -d /sys/bus/pci/slots/31 ]; check acpiphp-slots $? "$(ls /sys/bus/pci/slots | wc -l)"
echo VIO-GUEST-DONE
while true; do sleep 60; done
`

// specChecker validates requests and answers against Cloud Hypervisor's
// OpenAPI description, as the api package's tests do.
type specChecker struct {
	t      *testing.T
	router routers.Router
	sock   string
}

func newSpecChecker(t *testing.T, sock string) *specChecker {
	doc, err := openapi3.NewLoader().LoadFromFile("../api/testdata/cloud-hypervisor.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatal(err)
	}
	r, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &specChecker{t: t, router: r, sock: sock}
}

// call sends one request on a new connection, with fd attached by
// SCM_RIGHTS if fd >= 0, checks request and answer against the
// description, and returns the status and body.
func (c *specChecker) call(method, endpoint string, body []byte, fd int) (int, []byte) {
	c.t.Helper()
	newReq := func() *http.Request {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequest(method, "http://localhost/api/v1/"+endpoint, rd)
		if err != nil {
			c.t.Fatal(err)
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		return req
	}
	vreq := newReq()
	route, params, err := c.router.FindRoute(vreq)
	if err != nil {
		c.t.Fatalf("%s %s: not in the description: %v", method, endpoint, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route}
	if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
		c.t.Errorf("%s %s: the request does not fit the description: %v", method, endpoint, err)
	}

	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: c.sock, Net: "unix"})
	if err != nil {
		c.t.Fatal(err)
	}
	defer conn.Close()
	var raw bytes.Buffer
	req := newReq()
	req.Close = true
	if err := req.Write(&raw); err != nil {
		c.t.Fatal(err)
	}
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	if _, _, err := conn.WriteMsgUnix(raw.Bytes(), oob, nil); err != nil {
		c.t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, endpoint, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		c.t.Fatal(err)
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body:    io.NopCloser(bytes.NewReader(b)),
		Options: &openapi3filter.Options{IncludeResponseStatus: resp.StatusCode < 400},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		c.t.Errorf("%s %s: answer %d %s does not fit the description: %v", method, endpoint, resp.StatusCode, b, err)
	}
	return resp.StatusCode, b
}

// must is call expecting status.
func (c *specChecker) must(method, endpoint string, body []byte, fd int, status int) []byte {
	c.t.Helper()
	got, b := c.call(method, endpoint, body, fd)
	if got != status {
		c.t.Fatalf("%s %s: %d %s, want %d", method, endpoint, got, b, status)
	}
	return b
}

// openTap opens a TAP the way Kata's network setup does (IFF_TAP,
// IFF_NO_PI, IFF_VNET_HDR), gives it the host address and brings it up.
// The interface lives as long as a descriptor of it is open.
func openTap(t *testing.T) int {
	t.Helper()
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ifr, err := unix.NewIfreq(hpTap)
	if err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		t.Fatalf("TUNSETIFF %s: %v", hpTap, err)
	}
	run(t, "ip", "addr", "add", hpHostIP+"/24", "dev", hpTap)
	run(t, "ip", "link", "set", hpTap, "up")
	return fd
}

// TestAPIHotplug: `vio serve --api-socket`, vm.create with no disk and no
// NIC, vm.boot; then vm.add-disk and vm.add-net (a TAP descriptor passed
// with SCM_RIGHTS) on the running stock Debian guest, which sees a
// /dev/vda appear and reads the host's pattern from it (checksum) and
// writes its own (checked on the host afterwards), and an eth0 appear
// over which it pings the host; then vm.remove-device for both, after
// which the guest has lost them (ACPI eject through acpiphp). Every
// request and answer is checked against the OpenAPI description.
func TestAPIHotplug(t *testing.T) {
	a := labtest.Assets(t)
	initrd := labtest.Initramfs(t, hotplugGuest, "virtio_pci", "virtio_blk", "virtio_net", "vmw_vsock_virtio_transport")
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")

	// The disk: a host pattern at hpReadOff.
	img := filepath.Join(dir, "hot.img")
	pattern := make([]byte, hpLen)
	rand.Read(pattern)
	if err := os.WriteFile(img, pattern, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	hostSum := sha256.Sum256(pattern)

	tapFD := openTap(t)
	defer unix.Close(tapFD)

	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := quitOnDeadline(exec.CommandContext(ctx, vioBin, "serve", "--api-socket", sock, "-v")) // a hang dumps its goroutines
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var vioLog lockedBuffer
	cmd.Stderr = &vioLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()

	// The console: every line kept, markers signalled.
	var mu sync.Mutex
	var console []string
	upCh, usedCh, resizedCh, doneCh := make(chan struct{}), make(chan struct{}), make(chan struct{}), make(chan struct{})
	marks := map[string]chan struct{}{"VIO-GUEST-UP": upCh, "VIO-HOTPLUG-USED": usedCh, "VIO-RESIZED": resizedCh, "VIO-GUEST-DONE": doneCh}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			mu.Lock()
			console = append(console, line)
			mu.Unlock()
			if ch, ok := marks[line]; ok {
				close(ch)
				delete(marks, line) // only this goroutine uses marks
			}
		}
	}()
	dump := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(console, "\n") + "\n--- vio's log:\n" + vioLog.String()
	}
	await := func(ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case err := <-exited:
			t.Fatalf("vio exited (%v) before %s; console:\n%s", err, what, dump())
		case <-ctx.Done():
			t.Fatalf("no %s before the deadline; console:\n%s", what, dump())
		}
	}

	c := newSpecChecker(t, sock)
	// vio serve answers once its socket exists.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no API socket 10 s after start")
		}
		select {
		case err := <-exited:
			t.Fatalf("vio exited: %v\n%s", err, vioLog.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	c.must("GET", "vmm.ping", nil, -1, 200)
	create := `{"payload": {"kernel": "` + a.Kernel + `", "initramfs": "` + initrd + `", "cmdline": "console=ttyS0 panic=-1 quiet"},
  "cpus": {"boot_vcpus": 1, "max_vcpus": 1}, "memory": {"size": ` + strconv.Itoa(guestMemMiB<<20) + `},
  "serial": {"mode": "Tty"}, "console": {"mode": "Off"}}`
	c.must("PUT", "vm.create", []byte(create), -1, 204)
	c.must("PUT", "vm.boot", nil, -1, 204)
	await(upCh, "the guest's init")

	var disk, nic struct {
		ID  string `json:"id"`
		BDF string `json:"bdf"`
	}
	json.Unmarshal(c.must("PUT", "vm.add-disk", []byte(`{"path":"`+img+`","id":"hotdisk"}`), -1, 200), &disk)
	json.Unmarshal(c.must("PUT", "vm.add-net", []byte(`{"id":"hotnic","mac":"52:54:00:12:34:99","num_queues":2}`), tapFD, 200), &nic)
	c.must("PUT", "vm.add-vsock", []byte(`{"cid":3,"socket":"`+filepath.Join(dir, "vsock.sock")+`","id":"hotvsock"}`), -1, 200)
	bdf := regexp.MustCompile(`^0000:00:[01][0-9a-f]\.0$`)
	if disk.ID != "hotdisk" || nic.ID != "hotnic" || !bdf.MatchString(disk.BDF) || !bdf.MatchString(nic.BDF) || disk.BDF == nic.BDF {
		t.Fatalf("PciDeviceInfo: disk %+v, NIC %+v", disk, nic)
	}
	t.Logf("hot-plugged disk at %s, NIC at %s", disk.BDF, nic.BDF)
	// A second device with the same id is refused with a sentence.
	if st, b := c.call("PUT", "vm.add-disk", []byte(`{"path":"`+img+`","id":"hotnic"}`), -1); st != 409 || !strings.Contains(string(b), "hotnic") {
		t.Errorf("a duplicate id: %d %s, want 409 naming it", st, b)
	}
	await(usedCh, "the guest's use of the new devices")
	// The disk grows from 64 to 128 MiB under the running guest.
	c.must("PUT", "vm.resize-disk", []byte(`{"id":"hotdisk","desired_size":134217728}`), -1, 204)
	await(resizedCh, "the guest's view of the grown disk")
	if fi, err := os.Stat(img); err != nil {
		t.Error(err)
	} else if fi.Size() != 128<<20 {
		t.Errorf("the image after vm.resize-disk has %d bytes, want 128 MiB", fi.Size())
	}

	type vmInfo struct {
		State  string `json:"state"`
		Config struct {
			Disks []struct{ ID string } `json:"disks"`
			Net   []struct{ ID string } `json:"net"`
		} `json:"config"`
	}
	var info vmInfo
	json.Unmarshal(c.must("GET", "vm.info", nil, -1, 200), &info)
	if len(info.Config.Disks) != 1 || info.Config.Disks[0].ID != "hotdisk" || len(info.Config.Net) != 1 || info.Config.Net[0].ID != "hotnic" {
		t.Errorf("vm.info after hot plug: %+v", info.Config)
	}
	var counters map[string]map[string]int64
	json.Unmarshal(c.must("GET", "vm.counters", nil, -1, 200), &counters)
	if counters["hotdisk"]["device_Reads"] == 0 || counters["hotdisk"]["device_Writes"] == 0 || counters["hotnic"]["device_TxFrames"] == 0 {
		t.Errorf("vm.counters shows no I/O on the hot-plugged devices: %v %v", counters["hotdisk"], counters["hotnic"])
	}

	start := time.Now()
	c.must("PUT", "vm.remove-device", []byte(`{"id":"hotdisk"}`), -1, 204)
	c.must("PUT", "vm.remove-device", []byte(`{"id":"hotnic"}`), -1, 204)
	c.must("PUT", "vm.remove-device", []byte(`{"id":"hotvsock"}`), -1, 204)
	t.Logf("the three devices released by the guest and removed in %v", time.Since(start).Round(time.Millisecond))
	await(doneCh, "the guest's view of the removal")
	if st, _ := c.call("PUT", "vm.remove-device", []byte(`{"id":"hotdisk"}`), -1); st != 404 {
		t.Errorf("removing hotdisk twice: %d, want 404", st)
	}
	info = vmInfo{} // the config leaves out empty lists
	json.Unmarshal(c.must("GET", "vm.info", nil, -1, 200), &info)
	if len(info.Config.Disks) != 0 || len(info.Config.Net) != 0 || info.State != "Running" {
		t.Errorf("vm.info after removal: %+v", info)
	}

	// What the guest reported, and what it wrote, seen from the host.
	checks := map[string]string{}
	var readSum, writeSum string
	mu.Lock()
	for _, line := range console {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "CHECK" {
			checks[f[1]] = f[2]
		}
		if s, ok := strings.CutPrefix(line, "READSUM "); ok {
			readSum = s
		}
		if s, ok := strings.CutPrefix(line, "WRITESUM "); ok {
			writeSum = s
		}
		if strings.HasPrefix(line, "ACPI-COMPLAINT ") {
			t.Errorf("guest kernel: %s", line)
		}
	}
	mu.Unlock()
	for _, name := range []string{"disk-arrived", "disk-write", "nic-arrived", "ping", "vsock-arrived", "disk-resized", "disk-left", "nic-left", "vsock-left", "acpiphp-slots"} {
		if checks[name] != "ok" {
			t.Errorf("guest check %s: %q", name, checks[name])
		}
	}
	if readSum != hex.EncodeToString(hostSum[:]) {
		t.Errorf("the guest read %q from the hot-plugged disk, the host wrote %x", readSum, hostSum)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, hpLen)
	_, err = f.ReadAt(got, hpWritOff)
	f.Close()
	if gs := sha256.Sum256(got); err != nil || hex.EncodeToString(gs[:]) != writeSum {
		t.Errorf("the host reads %x at %d MiB (%v), the guest wrote %q", gs, hpWritOff>>20, err, writeSum)
	}
	if t.Failed() {
		t.Logf("console:\n%s", dump())
	}

	c.must("PUT", "vm.shutdown", nil, -1, 204)
	c.must("PUT", "vmm.shutdown", nil, -1, 204)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("vio exited with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("vio still runs 10 s after vmm.shutdown")
	}
}

// lockedBuffer is a bytes.Buffer that a command's output and the test
// may use at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
