package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/events"
)

// startVio runs this test binary as vio with args and returns a channel
// that gets its exit.
func startVio(t *testing.T, stderr *bytes.Buffer, args ...string) <-chan error {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "VIO_TEST_AS_VIO=1")
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	return exited
}

// TestServeEventsAndMetrics: `vio serve --metrics unix:M --event-monitor
// path=F` serves Prometheus text on M that Prometheus' parser reads, and
// leaves the VMM's and the VM's events in F, in order, after vmm.shutdown.
func TestServeEventsAndMetrics(t *testing.T) {
	dir := t.TempDir()
	sock, msock, evFile := filepath.Join(dir, "api.sock"), filepath.Join(dir, "m.sock"), filepath.Join(dir, "events")
	kernel := filepath.Join(dir, "vmlinuz")
	os.WriteFile(kernel, []byte("not booted here"), 0o644)
	var stderr bytes.Buffer
	exited := startVio(t, &stderr, "serve", "--api-socket", sock, "--metrics", "unix:"+msock, "--event-monitor", "path="+evFile)

	cl := api.NewClient(sock)
	defer cl.Close()
	ctx := context.Background()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := cl.Do(ctx, http.MethodGet, "vmm.ping", nil); err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("vio exited: %v\n%s", err, stderr.String())
		case <-tick.C:
		}
	}
	if _, err := cl.Do(ctx, http.MethodPut, "vm.create", []byte(`{"payload":{"kernel":"`+kernel+`"}}`)); err != nil {
		t.Fatal(err)
	}

	// The metrics socket was open before the API's.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", msock)
	}}}
	resp, err := hc.Get("http://localhost/metrics")
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	created := false
	for _, m := range fams["vio_vm_state"].GetMetric() {
		if m.GetLabel()[0].GetValue() == "Created" && m.GetGauge().GetValue() == 1 {
			created = true
		}
	}
	if !created {
		t.Fatalf("vio_vm_state does not say Created: %v", fams["vio_vm_state"])
	}
	if fams["vio_events_published_total"].GetMetric()[0].GetCounter().GetValue() < 2 {
		t.Fatalf("events published: %v", fams["vio_events_published_total"])
	}

	if _, err := cl.Do(ctx, http.MethodPut, "vmm.shutdown", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("vio: %v\n%s", err, stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("vio still runs 5 s after vmm.shutdown")
	}
	f, err := os.Open(evFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e events.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, e.Source+":"+e.Event)
	}
	if want := "vmm:starting vm:created vm:deleted vmm:shutdown"; strings.Join(got, " ") != want {
		t.Fatalf("events %v, want %s", got, want)
	}
	for _, s := range []string{sock, msock} {
		if _, err := os.Stat(s); err == nil {
			t.Errorf("%s outlives vio", s)
		}
	}
}

func TestObserveFlagsRefused(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"--metrics", "9100"}, "bad --metrics"},
		{[]string{"--event-monitor", "/tmp/x"}, "bad --event-monitor"},
		{[]string{"--event-monitor", "path=" + filepath.Join(dir, "no", "such", "dir")}, "bad --event-monitor"},
	} {
		var stderr bytes.Buffer
		args := append([]string{"serve", "--api-socket", filepath.Join(dir, "s")}, c.args...)
		select {
		case err := <-startVio(t, &stderr, args...):
			if err == nil || !strings.Contains(stderr.String(), c.says) {
				t.Errorf("%v: %v, stderr %q", c.args, err, stderr.String())
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%v: vio runs", c.args)
		}
	}
}
