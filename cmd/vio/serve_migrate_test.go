package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/viovmm/vio/api"
)

// TestServeReceivesUnderSandbox: a confined `vio serve` (seccomp, the
// default) listens for a migration on a UNIX socket and accepts a
// connection there. Pass 3 on 2026-12-07 found the receiver killed by
// SIGSYS: migration.Listen links its socket into place with linkat, which
// the seccomp filter did not allow.
func TestServeReceivesUnderSandbox(t *testing.T) {
	dir := t.TempDir()
	sock, mig := filepath.Join(dir, "api.sock"), filepath.Join(dir, "mig.sock")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "serve", "--api-socket", sock, "--sandbox", "on")
	cmd.Env = append(os.Environ(), "VIO_TEST_AS_VIO=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()
	cl := api.NewClient(sock)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	received := make(chan error, 1)
	for up := false; !up; {
		if _, err := cl.Do(ctx, http.MethodGet, "vmm.ping", nil); err == nil {
			up = true
			continue
		}
		select {
		case err := <-exited:
			t.Fatalf("vio exited before answering: %v\n%s", err, stderr.String())
		case <-ctx.Done():
			t.Fatalf("vio did not answer vmm.ping\n%s", stderr.String())
		case <-time.After(10 * time.Millisecond): // polling for the API, as Kata does
		}
	}
	go func() {
		_, err := cl.Do(ctx, http.MethodPut, "vm.receive-migration", []byte(`{"receiver_url": "unix:`+mig+`"}`))
		received <- err
	}()
	for {
		if _, err := os.Stat(mig); err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("vio died while it made its migration socket: %v\n%s", err, stderr.String())
		case err := <-received:
			t.Fatalf("vm.receive-migration ended before listening: %v\n%s", err, stderr.String())
		case <-ctx.Done():
			t.Fatalf("no migration socket\n%s", stderr.String())
		case <-time.After(10 * time.Millisecond): // polling for the socket file, as a sender does
		}
	}
	c, err := net.Dial("unix", mig)
	if err != nil {
		t.Fatalf("the migration socket refuses a sender: %v", err)
	}
	c.Close() // no stream: the receive fails, and vio goes on
	select {
	case err := <-received:
		if err == nil {
			t.Fatal("vm.receive-migration succeeded without a stream")
		}
	case err := <-exited:
		t.Fatalf("vio exited: %v\n%s", err, stderr.String())
	case <-ctx.Done():
		t.Fatal("vm.receive-migration did not end after the sender hung up")
	}
	if _, err := cl.Do(ctx, http.MethodGet, "vmm.ping", nil); err != nil {
		t.Fatalf("vio stopped answering after the failed receive: %v\n%s", err, stderr.String())
	}
}
