package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/block/multipath"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/lab/labtest"
)

// startQEMUNBD starts a qemu-nbd server of the raw file img on the UNIX
// socket sock, with image locking off so that two servers can share the
// file (as two storage controllers share a LUN). --fork returns once the
// server listens; the returned pid is the server's.
func startQEMUNBD(t *testing.T, img, sock string) int {
	t.Helper()
	pidFile := sock + ".pid"
	run(t, "qemu-nbd", "--fork", "--pid-file", pidFile, "--persistent", "-x", "x", "-k", sock,
		"--image-opts", "driver=raw,file.driver=file,file.filename="+img+",file.locking=off")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("qemu-nbd's pid file: %v", err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

// TestMultipathLab: a guest runs fio --verify on a disk reached over two
// NBD paths (two qemu-nbd servers of one raw file, failover). Once path 0
// has carried 300 of fio's requests, the host kills its server (SIGKILL)
// under the load. fio must finish with no error and the guest's kernel
// log none; vio.disk-multipath must report path 0 failed and path 1
// active, an event must name path 0, and after vio exits the raw file must
// hold exactly what the guest read back.
func TestMultipathLab(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "lun.img")
	run(t, "truncate", "-s", "16M", img)
	s0, s1 := filepath.Join(dir, "p0.sock"), filepath.Join(dir, "p1.sock")
	pid0 := startQEMUNBD(t, img, s0)
	startQEMUNBD(t, img, s1)

	cfg := filepath.Join(dir, "vm.json")
	spec := fmt.Sprintf(`{"disks":[{"id":"d0","graph":{"node":"multipath","name":"mp0",
		"options":{"policy":"failover","timeout":"10s","probe_interval":"200ms"},
		"children":[{"node":"nbd","path":"nbd+unix:///x?socket=%s"},
		            {"node":"nbd","path":"nbd+unix:///x?socket=%s"}]}}]}`, s0, s1)
	if err := os.WriteFile(cfg, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	initrd, tools := labtest.Guest{
		Script:   mirrorGuest, // fio --verify on /dev/vda, then the facts
		Modules:  []string{"virtio_pci", "virtio_blk"},
		Programs: []string{"/usr/bin/fio"},
	}.Build(t)
	sock, evFile := filepath.Join(dir, "api.sock"), filepath.Join(dir, "events")
	args := vioArgs(t, initrd, "--config", cfg, "--disk", "path="+tools+",readonly=on",
		"--api-socket", sock, "--event-monitor", "path="+evFile)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := quitOnDeadline(exec.CommandContext(ctx, args[0], args[1:]...)) // a hang dumps its goroutines
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})

	// cut waits (by polling the status, the only signal there is) until
	// path 0 has carried 300 requests, kills its server, and waits until
	// the multipath reports it failed.
	var (
		cutErr          error
		atKill, afterIt multipath.Status
		killed, failed  bool
	)
	status := func(cl *api.Client) (multipath.Status, error) {
		var st multipath.Status
		b, err := cl.Do(ctx, "PUT", "vio.disk-multipath", []byte(`{"node":"mp0"}`))
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		return st, err
	}
	cut := func() {
		cl := api.NewClient(sock)
		defer cl.Close()
		for !killed || !failed {
			st, err := status(cl)
			if err != nil {
				cutErr = err
				return
			}
			switch {
			case !killed && len(st.Paths) == 2 && st.Paths[0].Requests >= 300:
				atKill, killed = st, true
				if err := syscall.Kill(pid0, syscall.SIGKILL); err != nil {
					cutErr = err
					return
				}
			case killed && len(st.Paths) == 2 && st.Paths[0].State == "failed":
				afterIt, failed = st, true
			}
			select {
			case <-exited:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	var console strings.Builder
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			console.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "VIO-MIRROR-START") {
				wg.Add(1)
				go func() { defer wg.Done(); cut() }()
			}
		}
	}()
	err = cmd.Wait()
	close(exited)
	wg.Wait()
	if err != nil {
		t.Fatalf("vio: %v\nconsole:\n%s\nstderr:\n%s", err, console.String(), stderr.String())
	}
	if cutErr != nil {
		t.Fatalf("vio.disk-multipath: %v", cutErr)
	}
	if !killed {
		t.Fatalf("path 0 never carried 300 requests, so it was never cut; console:\n%s", console.String())
	}
	t.Logf("at the cut: %+v", atKill)
	facts := map[string]string{}
	for _, m := range mirrorFact.FindAllStringSubmatch(console.String(), -1) {
		facts[m[1]] = m[2]
	}
	t.Logf("guest: %v", facts)
	if facts["fio"] != "0" || facts["fioerr"] != "err=0" || facts["ioerr"] != "0" {
		t.Fatalf("the guest saw an error: %v\nconsole:\n%s", facts, console.String())
	}
	if !failed {
		t.Fatalf("vio.disk-multipath never reported path 0 failed after its server was killed (last at the cut: %+v)", atKill)
	}
	t.Logf("after the cut: %+v", afterIt)
	if p := afterIt.Paths[1]; p.State != "active" {
		t.Errorf("path 1 after the cut: %+v, want active", p)
	}
	evs, err := os.ReadFile(evFile)
	if err != nil {
		t.Fatal(err)
	}
	named := false
	for _, line := range strings.Split(strings.TrimSpace(string(evs)), "\n") {
		var e events.Event
		if json.Unmarshal([]byte(line), &e) == nil && e.Source == "disk" && e.Event == "multipath-path-failed" &&
			e.Properties["node"] == "mp0" && e.Properties["path"] == "0" {
			named = true
		}
	}
	if !named {
		t.Errorf("no multipath-path-failed event for path 0 of mp0:\n%s", evs)
	}
	if got := strings.Fields(run(t, "sh", "-c", "head -c 8388608 "+img+" | sha256sum"))[0]; got != facts["sum"] {
		t.Errorf("the shared raw file holds %s, the guest read %s", got, facts["sum"])
	}
}
