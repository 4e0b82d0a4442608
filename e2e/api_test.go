package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/lab/labtest"
)

// clockScript is the guest half of TestAPIKataPause: it prints its boot
// clock (/proc/uptime: CLOCK_BOOTTIME, which is CLOCK_MONOTONIC plus time
// suspended, and nothing suspends here) once a second, for ever.
const clockScript = `
echo VIO-GUEST-UP
while true; do echo "VIO-CLOCK $(cut -d' ' -f1 /proc/uptime)"; sleep 1; done
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
func TestAPIKataPause(t *testing.T) {
	a := labtest.Assets(t)
	initrd := labtest.Initramfs(t, clockScript)
	sock := filepath.Join(t.TempDir(), "clh.sock")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, vioBin, "--api-socket", sock, "-v")
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
}
