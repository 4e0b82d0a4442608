package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// balloonScript is the guest half of TestBalloon: it touches nearly all
// of its free memory (a tmpfs file as large as MemAvailable allows, less a
// margin), deletes the file, so that the host holds those pages while the
// guest has them free, and then reports MemTotal and MemAvailable (kB)
// every second.
const balloonScript = `
mkdir -p /fill && mount -t tmpfs -o size=90% tmpfs /fill
avail=$(awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo)
dd if=/dev/zero of=/fill/f bs=1M count=$((avail - 48)) 2>/dev/null
echo "VIO-FILLED $((avail - 48))"
rm /fill/f
while true; do
	echo "VIO-MEM $(awk '/MemTotal/ {t=$2} /MemAvailable/ {a=$2} END {print t, a}' /proc/meminfo)"
	sleep 1
done
`

// guestMem is one VIO-MEM line.
type guestMem struct{ totalKB, availKB int64 }

// vmRSS reads the VmRSS of process pid, in bytes.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/PID/status")
	return 0
}

// TestBalloon boots a Debian guest with a virtio-balloon (stock
// virtio_balloon driver, no deflate-on-OOM, no free page reporting, so that
// only the balloon gives memory back), lets it touch and free most of its
// RAM, then through the API inflates the balloon by 128 MiB: vio's RSS
// must fall by at least 100 MiB while the guest goes on reporting, and the
// guest's MemTotal by 128 MiB. Deflating to 0 must give the guest its
// memory back (MemTotal as before, MemAvailable up by 100 MiB or more).
func TestBalloon(t *testing.T) {
	const memMiB, inflate = 512, 128 << 20
	a := labtest.Assets(t)
	initrd := labtest.Initramfs(t, balloonScript, "virtio_pci", "virtio_balloon")
	sock := filepath.Join(t.TempDir(), "api.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, vioBin, "run", "--kernel", a.Kernel, "--initrd", initrd,
		"--memory", strconv.Itoa(memMiB)+"M", "--cmdline", "console=ttyS0 panic=-1 quiet",
		"--balloon", "size=0", "--api-socket", sock)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	filled := make(chan string, 1)
	mems := make(chan guestMem, 1000)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 2 && f[0] == "VIO-FILLED":
				filled <- f[1]
			case len(f) == 3 && f[0] == "VIO-MEM":
				total, err1 := strconv.ParseInt(f[1], 10, 64)
				avail, err2 := strconv.ParseInt(f[2], 10, 64)
				if err1 == nil && err2 == nil {
					mems <- guestMem{total, avail}
				}
			}
		}
		close(mems)
	}()
	cl := apiClient(t, ctx, sock, func() bool { return cmd.ProcessState != nil })

	select {
	case mib := <-filled:
		t.Logf("the guest touched and freed %s MiB", mib)
	case <-ctx.Done():
		t.Fatal("the guest never filled its memory")
	}
	// next drops the reports already read and returns the second one that
	// comes after: written after the call began, so it shows the guest's
	// memory as the host's last request left it, and that the guest runs.
	next := func() guestMem {
		t.Helper()
		for len(mems) > 0 {
			<-mems
		}
		var m guestMem
		for range 2 {
			select {
			case got, ok := <-mems:
				if !ok {
					t.Fatal("vio's console closed: the process ended")
				}
				m = got
			case <-ctx.Done():
				t.Fatal("no memory report from the guest before the deadline")
			}
		}
		return m
	}
	counters := func() map[string]int64 {
		t.Helper()
		b, err := cl.Do(ctx, http.MethodGet, "vm.counters", nil)
		if err != nil {
			t.Fatal(err)
		}
		var all map[string]map[string]int64
		if err := json.Unmarshal(b, &all); err != nil {
			t.Fatal(err)
		}
		return all["balloon"]
	}
	// waitActual polls the balloon's counters until the guest reports
	// that it holds want bytes; the guest works at emulation speed.
	waitActual := func(want int64) map[string]int64 {
		t.Helper()
		for {
			c := counters()
			if c["device_actual_bytes"] == want {
				return c
			}
			if ctx.Err() != nil {
				t.Fatalf("the balloon never reached %d bytes: counters %v", want, c)
			}
			time.Sleep(200 * time.Millisecond) // polling the guest's progress, as a user would
		}
	}

	before := next()
	rss0 := vmRSS(t, cmd.Process.Pid)
	put(t, ctx, cl, "vm.resize", fmt.Sprintf(`{"desired_balloon": %d}`, inflate))
	c := waitActual(inflate)
	rss1 := vmRSS(t, cmd.Process.Pid)
	inflated := next()
	t.Logf("inflate 128 MiB: vio RSS %d -> %d MiB (-%d MiB); guest MemTotal %d -> %d kB, MemAvailable %d -> %d kB; counters %v",
		rss0>>20, rss1>>20, (rss0-rss1)>>20, before.totalKB, inflated.totalKB, before.availKB, inflated.availKB, c)
	if rss0-rss1 < 100<<20 {
		t.Errorf("inflating by 128 MiB lowered vio's RSS by only %d MiB", (rss0-rss1)>>20)
	}
	if c["device_released_bytes"] < 100<<20 || c["device_bad_pfns"] != 0 || c["device_release_errors"] != 0 {
		t.Errorf("balloon counters after inflating: %v", c)
	}
	if d := before.totalKB - inflated.totalKB; d != inflate>>10 {
		t.Errorf("guest MemTotal fell by %d kB, want %d", d, inflate>>10)
	}
	if c["device_guest_total_memory"] <= 0 {
		t.Errorf("no guest statistics in the counters: %v", c)
	}

	put(t, ctx, cl, "vm.resize", `{"desired_balloon": 0}`)
	c = waitActual(0)
	after := next()
	rss2 := vmRSS(t, cmd.Process.Pid)
	t.Logf("deflate to 0: guest MemTotal %d kB, MemAvailable %d kB; vio RSS %d MiB; counters %v", after.totalKB, after.availKB, rss2>>20, c)
	if after.totalKB != before.totalKB {
		t.Errorf("guest MemTotal %d kB after deflating, %d before inflating", after.totalKB, before.totalKB)
	}
	if after.availKB-inflated.availKB < 100<<10 {
		t.Errorf("deflating gave the guest only %d kB more available memory", after.availKB-inflated.availKB)
	}
	if c["device_deflated_pages"] < inflate/4096 {
		t.Errorf("deflated %d pages, want %d", c["device_deflated_pages"], inflate/4096)
	}
	put(t, ctx, cl, "vmm.shutdown", "")
	if err := cmd.Wait(); err != nil {
		t.Errorf("vio: %v", err)
	}
}
