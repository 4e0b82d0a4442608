package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/lab/labtest"
)

// clockScript is the guest half of TestAPIKataPause: it prints its boot
// clock (/proc/uptime: CLOCK_BOOTTIME, which is CLOCK_MONOTONIC plus time
// suspended, and nothing suspends here) once a second, for ever.
//
// Before each tick it also writes one 4 KiB block of its disk, flushed,
// so that the host's metrics have disk I/O to show: when the host has
// seen n ticks, the disk has had at least n writes.
const clockScript = `
echo VIO-GUEST-UP
i=0
while true; do
	dd if=/dev/zero of=/dev/vda bs=4096 count=1 seek=$i conv=fsync 2>/dev/null
	echo "VIO-CLOCK $(cut -d' ' -f1 /proc/uptime)"
	i=$(( (i + 1) % 2048 ))
	sleep 1
done
`

// tick is one clock line: the guest's clock and when the host read it.
type tick struct {
	guest float64
	host  time.Time
}

// TestAPIKataPause drives a real Debian guest through the API the way
// Kata Containers does: `vio --api-socket S`, ping until up, vm.create with
// a Kata-like body, info=Created, vm.boot, info=Running, pause, resume,
// counters, vm.shutdown, vmm.shutdown answered 204 and the process gone.
// Across a 3 s pause the guest's clock must not advance: the gap between
// its ticks around the pause stays under 2 s.
//
// It also watches the VM the way an operator would: vio runs with
// --metrics and --event-monitor; the disk's counters and its write
// latency histogram, scraped and parsed with Prometheus' parser, move
// between two scrapes while the guest writes, and the event file holds
// the VM's lifecycle in order.
func TestAPIKataPause(t *testing.T) {
	a := labtest.Assets(t)
	initrd := labtest.Initramfs(t, clockScript, "virtio_pci", "virtio_blk")
	dir := t.TempDir()
	sock, msock, evFile := filepath.Join(dir, "clh.sock"), filepath.Join(dir, "metrics.sock"), filepath.Join(dir, "events")
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 8<<20); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, vioBin, "--api-socket", sock, "-v", "--metrics", "unix:"+msock, "--event-monitor", "path="+evFile)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()

	// The console: collect clock ticks, note that the guest came up.
	var mu sync.Mutex
	var ticks []tick
	up := make(chan struct{})
	newTick := make(chan struct{}, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		seenUp := false
		for sc.Scan() {
			line := sc.Text()
			if !seenUp && strings.Contains(line, "VIO-GUEST-UP") {
				seenUp = true
				close(up)
			}
			if f := strings.Fields(line); len(f) == 2 && f[0] == "VIO-CLOCK" {
				if v, err := strconv.ParseFloat(f[1], 64); err == nil {
					mu.Lock()
					ticks = append(ticks, tick{v, time.Now()})
					mu.Unlock()
					select {
					case newTick <- struct{}{}:
					default:
					}
				}
			}
		}
	}()
	// waitTicks waits until the console has shown n ticks in all.
	waitTicks := func(n int) []tick {
		t.Helper()
		for {
			mu.Lock()
			got := append([]tick(nil), ticks...)
			mu.Unlock()
			if len(got) >= n {
				return got
			}
			select {
			case <-newTick:
			case <-ctx.Done():
				t.Fatalf("saw %d clock ticks of %d before the deadline", len(got), n)
			}
		}
	}

	cl := api.NewClient(sock)
	defer cl.Close()
	do := func(method, endpoint string, body []byte) []byte {
		t.Helper()
		out, err := cl.Do(ctx, method, endpoint, body)
		if err != nil {
			t.Fatalf("%s %s: %v", method, endpoint, err)
		}
		return out
	}
	state := func(want string) {
		t.Helper()
		var info struct{ State string }
		if err := json.Unmarshal(do(http.MethodGet, "vm.info", nil), &info); err != nil || info.State != want {
			t.Fatalf("vm.info state %q (%v), want %q", info.State, err, want)
		}
	}

	// Kata polls vmm.ping every 10 ms for up to 10 s.
	pingStart := time.Now()
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	for {
		if _, err := cl.Do(ctx, http.MethodGet, "vmm.ping", nil); err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("vio exited before answering vmm.ping: %v", err)
		case <-tk.C:
		}
		if time.Since(pingStart) > 10*time.Second {
			t.Fatal("vio did not answer vmm.ping within Kata's 10 s")
		}
	}
	t.Logf("API up after %v", time.Since(pingStart).Round(time.Millisecond))

	create := `{
  "payload": {"kernel": "` + a.Kernel + `", "initramfs": "` + initrd + `", "cmdline": "console=ttyS0 panic=-1 quiet"},
  "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "nested": true, "kvm_hyperv": false,
           "topology": {"threads_per_core": 1, "cores_per_die": 1, "dies_per_package": 1, "packages": 1}},
  "memory": {"size": ` + strconv.Itoa(guestMemMiB<<20) + `, "hotplug_size": 1073741824, "hotplug_method": "Acpi", "thp": true, "shared": false},
  "serial": {"mode": "Tty"},
  "console": {"mode": "Off", "iommu": false},
  "rng": {"src": "/dev/urandom", "iommu": false},
  "disks": [{"path": "` + disk + `", "id": "_disk0"}],
  "vsock": {"cid": 3, "socket": "` + filepath.Join(t.TempDir(), "vsock.sock") + `"},
  "platform": {"num_pci_segments": 2},
  "iommu": false, "watchdog": false, "pvpanic": false
}`
	do(http.MethodPut, "vm.create", []byte(create))
	state("Created")
	bootStart := time.Now()
	do(http.MethodPut, "vm.boot", nil)
	t.Logf("vm.boot answered in %v", time.Since(bootStart).Round(time.Millisecond))
	state("Running")
	select {
	case <-up:
	case <-ctx.Done():
		t.Fatal("the guest never reached its init")
	}
	waitTicks(3)
	before := scrapeDisk(t, msock)

	do(http.MethodPut, "vm.pause", nil)
	pausedAt := time.Now()
	state("Paused")
	mu.Lock()
	nPaused := len(ticks)
	mu.Unlock()
	// The pause is the stimulus being measured, not a synchronisation.
	time.Sleep(3 * time.Second)
	mu.Lock()
	during := len(ticks) - nPaused
	mu.Unlock()
	do(http.MethodPut, "vm.resume", nil)
	pause := time.Since(pausedAt)
	state("Running")
	// At most one tick may have been on its way through the console
	// when the vCPU stopped.
	if during > 1 {
		t.Errorf("the guest printed %d ticks while paused", during)
	}
	after := waitTicks(nPaused + during + 2)
	// At least two ticks came after the first scrape, each after a write.
	afterIO := scrapeDisk(t, msock)
	t.Logf("disk0 before: %+v; after: %+v", before, afterIO)
	if afterIO.writes < before.writes+2 || afterIO.writtenBytes < before.writtenBytes+2*4096 {
		t.Errorf("the disk's write counters did not move with the guest's writes: before %+v, after %+v", before, afterIO)
	}
	if afterIO.writeLatencies < before.writeLatencies+2 {
		t.Errorf("the write latency histogram did not count the guest's writes: before %+v, after %+v", before, afterIO)
	}
	if afterIO.state != "Running" {
		t.Errorf("vio_vm_state says %q after resume", afterIO.state)
	}

	// The gap in guest time between the last tick before the pause and
	// the first one after it.
	last, next := after[nPaused+during-1], after[nPaused+during]
	gap := next.guest - last.guest
	hostGap := next.host.Sub(last.host)
	t.Logf("paused for %v; guest clock gap across it %.2f s (host saw %v between the ticks)", pause.Round(time.Millisecond), gap, hostGap.Round(time.Millisecond))
	if gap >= 2 {
		t.Errorf("the guest's clock advanced %.2f s across a %v pause: kvmclock was not frozen", gap, pause.Round(time.Millisecond))
	}
	if hostGap < 3*time.Second {
		t.Errorf("the host saw ticks %v apart across a 3 s pause: the guest was not paused", hostGap)
	}

	var counters map[string]map[string]int64
	if err := json.Unmarshal(do(http.MethodGet, "vm.counters", nil), &counters); err != nil {
		t.Fatal(err)
	}
	var exits int64
	for k, v := range counters["vcpu0"] {
		if strings.HasPrefix(k, "exits_") {
			exits += v
		}
	}
	if exits == 0 || counters["vcpu0"]["kicks"] == 0 {
		t.Errorf("vm.counters shows no exits or no kicks for vcpu0 after a pause: %v", counters["vcpu0"])
	}

	do(http.MethodPut, "vm.shutdown", nil)
	state("Shutdown")
	stopAt := time.Now()
	if out, err := cl.Do(ctx, http.MethodPut, "vmm.shutdown", nil); err != nil || len(out) != 0 {
		t.Fatalf("vmm.shutdown: %v %q", err, out)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("vio exited with %v after vmm.shutdown", err)
		}
		t.Logf("vio gone %v after vmm.shutdown was sent", time.Since(stopAt).Round(time.Millisecond))
	case <-time.After(3 * time.Second):
		t.Fatal("vio still runs 3 s after vmm.shutdown (Kata's limit)")
	}
	checkEventFile(t, evFile)
}

// diskReading is what scrapeDisk reads from vio's metrics.
type diskReading struct {
	state                                string
	writes, writtenBytes, writeLatencies uint64
}

// scrapeDisk fetches /metrics from vio's UNIX socket, parses it with
// Prometheus' parser and reads disk0's write counters.
func scrapeDisk(t *testing.T, sock string) diskReading {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://localhost/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("Prometheus' parser refused vio's metrics: %v", err)
	}
	labels := func(m *dto.Metric) map[string]string {
		l := map[string]string{}
		for _, p := range m.GetLabel() {
			l[p.GetName()] = p.GetValue()
		}
		return l
	}
	var r diskReading
	for _, m := range fams["vio_vm_state"].GetMetric() {
		if m.GetGauge().GetValue() == 1 {
			r.state = labels(m)["state"]
		}
	}
	for _, m := range fams["vio_device_writes_total"].GetMetric() {
		if labels(m)["device"] == "disk0" {
			r.writes = uint64(m.GetCounter().GetValue())
		}
	}
	for _, m := range fams["vio_device_written_bytes_total"].GetMetric() {
		if labels(m)["device"] == "disk0" {
			r.writtenBytes = uint64(m.GetCounter().GetValue())
		}
	}
	for _, m := range fams["vio_disk_request_duration_seconds"].GetMetric() {
		if l := labels(m); l["device"] == "disk0" && l["op"] == "write" {
			r.writeLatencies = m.GetHistogram().GetSampleCount()
		}
	}
	return r
}

// checkEventFile reads --event-monitor's file after vio exited: the VMM
// started, the VM went through its lifecycle in order, the VMM stopped.
func checkEventFile(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var all, vm []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e events.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("event line %q: %v", sc.Text(), err)
		}
		all = append(all, e.Source+":"+e.Event)
		if e.Source == events.SourceVM {
			vm = append(vm, e.Event)
		}
	}
	t.Logf("events: %v", all)
	if len(all) < 2 || all[0] != "vmm:starting" || all[len(all)-1] != "vmm:shutdown" {
		t.Errorf("the event file does not start with vmm:starting and end with vmm:shutdown: %v", all)
	}
	want := "created booting booted pausing paused resuming resumed shutdown deleted"
	if got := strings.Join(vm, " "); got != want {
		t.Errorf("VM events %q, want %q", got, want)
	}
}
