package main

import (
	"bytes"
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
	"github.com/viovmm/vio/loader/loadertest"
)

// hopServer is one `vio serve -vv` process of TestServeLocalMigrationHops.
type hopServer struct {
	name, events string
	cl           *api.Client
	mu           sync.Mutex
	stderr       bytes.Buffer
	exited       chan error
}

func (s *hopServer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.Write(p)
}

// take returns the debug lines logged since the last take that say where
// a migration's pause went.
func (s *hopServer) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, line := range strings.Split(s.stderr.String(), "\n") {
		for _, m := range []string{"warmed up", "state saved for the migration", "state restored", "migrated VM running", "migration downtime"} {
			if strings.Contains(line, m) {
				out = append(out, s.name+": "+line)
			}
		}
	}
	s.stderr.Reset()
	return out
}

func (s *hopServer) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

// lastEvent returns the properties of the last event named so in the
// server's event file.
func (s *hopServer) lastEvent(t *testing.T, event string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(s.events)
	if err != nil {
		t.Fatal(err)
	}
	var last map[string]string
	for _, line := range strings.Split(string(b), "\n") {
		var e struct {
			Event      string            `json:"event"`
			Properties map[string]string `json:"properties"`
		}
		if json.Unmarshal([]byte(line), &e) == nil && e.Event == event {
			last = e.Properties
		}
	}
	return last
}

func startHopServer(t *testing.T, ctx context.Context, dir, name string) *hopServer {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := &hopServer{name: name, events: filepath.Join(dir, name+"-events.json"), exited: make(chan error, 1)}
	sock := filepath.Join(dir, name+".sock")
	// As the lab runs it: sandboxed (the default), with debug logging.
	cmd := exec.Command(exe, "serve", "--api-socket", sock, "--event-monitor", "path="+s.events, "-vv", "--allow-pvm")
	cmd.Env = append(os.Environ(), "VIO_TEST_AS_VIO=1")
	cmd.Stderr = s
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-s.exited })
	s.cl = api.NewClient(sock)
	t.Cleanup(func() { s.cl.Close() })
	for {
		if _, err := s.cl.Do(ctx, http.MethodGet, "vmm.ping", nil); err == nil {
			return s
		}
		select {
		case err := <-s.exited:
			t.Fatalf("vio %s exited before answering: %v\n%s", name, err, s.log())
		case <-ctx.Done():
			t.Fatalf("vio %s did not answer vmm.ping\n%s", name, s.log())
		case <-time.After(10 * time.Millisecond): // polling for the API
		}
	}
}

func (s *hopServer) put(t *testing.T, ctx context.Context, endpoint, body string) {
	t.Helper()
	var b []byte
	if body != "" {
		b = []byte(body)
	}
	if _, err := s.cl.Do(ctx, http.MethodPut, endpoint, b); err != nil {
		t.Fatalf("vio %s: %s: %v\n%s", s.name, endpoint, err, s.log())
	}
}

func (s *hopServer) state(t *testing.T, ctx context.Context) string {
	t.Helper()
	b, err := s.cl.Do(ctx, http.MethodGet, "vm.info", nil)
	if err != nil {
		return err.Error()
	}
	var info struct{ State string }
	json.Unmarshal(b, &info)
	return info.State
}

// Same-host migration between two `vio serve` processes, as the lab's
// TestLocalMigration does it (1 vCPU, 1 GiB of shared RAM, sandboxed),
// with a synthetic guest that halts, three hops A->B->A->B: each process
// pays its own first uses, which a test inside one process cannot show.
// Each hop must end with the destination running, the source shut down
// and no page copied; each hop's pause split (the migrated event) and the
// debug log's finer breakdown are logged. Run it alone and more than once
// to compare the first hop with the later ones.
func TestServeLocalMigrationHops(t *testing.T) {
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err != nil {
		t.Skip("no usable /dev/kvm here")
	} else {
		f.Close()
	}
	dir := t.TempDir()
	opts := loadertest.Default()
	opts.Entry64 = []byte{0xfb, 0xf4, 0xeb, 0xfd} // sti; hlt; jmp back to the hlt
	kernel := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(kernel, loadertest.BzImage(opts), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vios := [2]*hopServer{startHopServer(t, ctx, dir, "a"), startHopServer(t, ctx, dir, "b")}
	vios[0].put(t, ctx, "vm.create", `{"payload": {"kernel": "`+kernel+`"}, "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
	  "memory": {"size": 1073741824, "shared": true}, "serial": {"mode": "Off"}, "console": {"mode": "Off"}}`)
	vios[0].put(t, ctx, "vm.boot", "")
	vios[0].take()
	for hop := 1; hop <= 3; hop++ {
		src, dst := vios[(hop+1)%2], vios[hop%2]
		mig := filepath.Join(dir, "mig"+strconv.Itoa(hop)+".sock")
		received := make(chan error, 1)
		go func() {
			_, err := dst.cl.Do(ctx, http.MethodPut, "vm.receive-migration", []byte(`{"receiver_url": "unix:`+mig+`"}`))
			received <- err
		}()
		for {
			if _, err := os.Stat(mig); err == nil {
				break
			}
			select {
			case err := <-received:
				t.Fatalf("hop %d: vm.receive-migration ended before listening: %v\n%s", hop, err, dst.log())
			case <-ctx.Done():
				t.Fatalf("hop %d: no migration socket", hop)
			case <-time.After(5 * time.Millisecond): // polling for the socket file, as a sender does
			}
		}
		src.put(t, ctx, "vm.send-migration", `{"destination_url": "unix:`+mig+`", "local": true}`)
		if err := <-received; err != nil {
			t.Fatalf("hop %d: vm.receive-migration: %v\n%s", hop, err, dst.log())
		}
		if s, d := src.state(t, ctx), dst.state(t, ctx); s != "Shutdown" || d != "Running" {
			t.Fatalf("hop %d: the source is %s, the destination %s; want Shutdown and Running", hop, s, d)
		}
		m := src.lastEvent(t, "migrated")
		if m["reason"] != "local" || m["data_pages"] != "0" {
			t.Fatalf("hop %d was not a local migration: %v", hop, m)
		}
		t.Logf("hop %d %s->%s: downtime_ms=%s pause_ms=%s send_ms=%s resume_ms=%s total_ms=%s", hop, src.name, dst.name,
			m["downtime_ms"], m["pause_ms"], m["send_ms"], m["resume_ms"], m["total_ms"])
		for _, s := range []*hopServer{src, dst} {
			for _, line := range s.take() {
				t.Logf("hop %d:   %s", hop, line)
			}
		}
		src.put(t, ctx, "vm.delete", "")
	}
}
