package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/vmm"
	"github.com/viovmm/vio/vmm/vmmtest"
)

// startWithEvents serves the API of a Controller that publishes on an
// event monitor, and returns the socket and the server.
func startWithEvents(t *testing.T, withMonitor bool) (string, *api.Server) {
	t.Helper()
	dir := t.TempDir()
	sock, kernel := filepath.Join(dir, "api.sock"), filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("never booted"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctl := vmm.NewController(vmmtest.NewBuilder().Build, nil)
	srv := api.NewServer(ctl, nil)
	if withMonitor {
		m := events.NewMonitor()
		ctl.SetEvents(m)
		srv.SetEvents(m)
	}
	l, err := api.Listen(sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close(); ctl.Delete() })
	cl := api.NewClient(sock)
	defer cl.Close()
	if _, err := cl.Do(context.Background(), http.MethodPut, "vm.create", []byte(`{"payload":{"kernel":"`+kernel+`"}}`)); err != nil {
		t.Fatal(err)
	}
	return sock, srv
}

func unixClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
}

func TestEventStream(t *testing.T) {
	sock, srv := startWithEvents(t, true)
	resp, err := unixClient(sock).Get("http://localhost/api/v1/" + api.EventsEndpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("%s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	// The answer's header means the stream is subscribed: what follows
	// is seen.
	cl := api.NewClient(sock)
	defer cl.Close()
	for _, ep := range []string{"vm.boot", "vm.pause", "vm.resume", "vm.shutdown"} {
		if _, err := cl.Do(context.Background(), http.MethodPut, ep, nil); err != nil {
			t.Fatalf("%s: %v", ep, err)
		}
	}
	sc := bufio.NewScanner(resp.Body)
	want := []string{"booting", "booted", "pausing", "paused", "resuming", "resumed", "shutdown"}
	for _, w := range want {
		if !sc.Scan() {
			t.Fatalf("the stream ended before %q: %v", w, sc.Err())
		}
		var e events.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if e.Source != events.SourceVM || e.Event != w {
			t.Fatalf("got %s, want vm %s", sc.Text(), w)
		}
	}

	// Closing the server ends the stream at once, not at Close's timeout.
	start := time.Now()
	srv.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v with a stream open", d)
	}
	if sc.Scan() {
		t.Fatalf("more after close: %q", sc.Text())
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("stream end: %v", err)
	}
}

func TestEventStreamNeedsMonitorAndGET(t *testing.T) {
	sock, _ := startWithEvents(t, false)
	cl := api.NewClient(sock)
	defer cl.Close()
	_, err := cl.Do(context.Background(), http.MethodGet, api.EventsEndpoint, nil)
	var se *api.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusNotFound {
		t.Fatalf("without a monitor: %v", err)
	}
	sock, _ = startWithEvents(t, true)
	cl2 := api.NewClient(sock)
	defer cl2.Close()
	_, err = cl2.Do(context.Background(), http.MethodPut, api.EventsEndpoint, nil)
	if !errors.As(err, &se) || se.Status != http.StatusMethodNotAllowed {
		t.Fatalf("PUT: %v", err)
	}
}
