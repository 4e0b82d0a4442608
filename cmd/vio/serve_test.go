package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/api"
)

// TestMain lets this test binary be vio itself (VIO_TEST_AS_VIO=1), so
// that tests can start it as a separate process, as Kata does.
func TestMain(m *testing.M) {
	if os.Getenv("VIO_TEST_AS_VIO") == "1" {
		os.Args = append([]string{"vio"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestServeAsKataStartsIt: `vio --api-socket PATH` (no subcommand) comes up
// within Kata's 10 s of pings, takes a VM, answers vmm.shutdown with 204
// and is gone within Kata's 3 s, socket file included. vio ctl talks to it.
func TestServeAsKataStartsIt(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "clh.sock")
	kernel := filepath.Join(dir, "vmlinuz")
	os.WriteFile(kernel, []byte("not booted here"), 0o644)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "--api-socket", sock)
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
	ctx := context.Background()
	// Kata: vmm.ping every 10 ms for up to 10 s, giving up if the
	// process dies.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for up := false; !up; {
		if _, err := cl.Do(ctx, http.MethodGet, "vmm.ping", nil); err == nil {
			up = true
			continue
		}
		select {
		case err := <-exited:
			t.Fatalf("vio exited before answering: %v\n%s", err, stderr.String())
		case <-deadline:
			t.Fatalf("vio did not answer vmm.ping within 10 s\n%s", stderr.String())
		case <-tick.C:
		}
	}

	if _, err := cl.Do(ctx, http.MethodPut, "vm.create", []byte(`{"payload":{"kernel":"`+kernel+`"},"cpus":{"boot_vcpus":1,"max_vcpus":1},"memory":{"size":268435456},"balloon":{"size":0}}`)); err != nil {
		t.Fatal(err)
	}
	out, err := runCtl(t, "--api-socket", sock, "info")
	var info struct{ State string }
	if err != nil || json.Unmarshal([]byte(out), &info) != nil || info.State != "Created" {
		t.Fatalf("vio ctl info: %v %q", err, out)
	}
	if out, err := runCtl(t, "--api-socket", sock, "resize-balloon", "64M"); err != nil || !strings.HasPrefix(out, "balloon target set") {
		t.Fatalf("vio ctl resize-balloon: %v %q", err, out)
	}
	out, _ = runCtl(t, "--api-socket", sock, "info")
	if !strings.Contains(out, `"size": 67108864`) {
		t.Fatalf("vio ctl info after resize-balloon: %s", out)
	}
	for _, bad := range [][]string{{"resize-balloon", "lots"}, {"resize-balloon"}, {"resize-balloon", "1G"}, {"balloon"}} {
		if out, err := runCtl(t, append([]string{"--api-socket", sock}, bad...)...); err == nil {
			t.Errorf("vio ctl %v: accepted: %q", bad, out)
		}
	}
	if out, err := runCtl(t, "--api-socket", sock, "resume"); err == nil || !strings.Contains(err.Error(), "not been booted") {
		t.Fatalf("vio ctl resume before boot: %v %q", err, out)
	}
	// Devices before boot: into the config and out again, by id.
	if out, err := runCtl(t, "--api-socket", sock, "add-disk", "path="+kernel+",id=d1"); err != nil || !strings.Contains(out, "disk added") {
		t.Fatalf("vio ctl add-disk: %v %q", err, out)
	}
	if out, err := runCtl(t, "--api-socket", sock, "add-disk", "path="+kernel+",id=d1"); err == nil || !strings.Contains(err.Error(), `"d1"`) {
		t.Fatalf("vio ctl add-disk with a duplicate id: %v %q", err, out)
	}
	if out, err := runCtl(t, "--api-socket", sock, "remove-device", "d1"); err != nil || out != "device removed\n" {
		t.Fatalf("vio ctl remove-device: %v %q", err, out)
	}
	if out, err := runCtl(t, "--api-socket", sock, "remove-device", "d1"); err == nil || !strings.Contains(err.Error(), `"d1"`) {
		t.Fatalf("vio ctl remove-device of a removed id: %v %q", err, out)
	}
	// --local reaches the API as local: true (without it, this VM that
	// has not booted would be the complaint).
	if out, err := runCtl(t, "--api-socket", sock, "send-migration", "--local", "tcp:127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "UNIX socket") {
		t.Fatalf("vio ctl send-migration --local over TCP: %v %q", err, out)
	}
	if out, err := runCtl(t, "--api-socket", sock, "receive-migration", "--local", "unix:/nonexistent/m"); err == nil || !strings.Contains(err.Error(), "for send-migration") {
		t.Fatalf("vio ctl receive-migration --local: %v %q", err, out)
	}
	if out, err := runCtl(t, "--api-socket", sock, "shutdown-vmm"); err != nil || out != "VMM shut down\n" {
		t.Fatalf("vio ctl shutdown-vmm: %v %q", err, out)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("vio exited with %v\n%s", err, stderr.String())
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("vio still runs 3 s after vmm.shutdown\n%s", stderr.String())
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the socket outlives vio: %v", err)
	}
}

func runCtl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	c := ctlCommand()
	var out bytes.Buffer
	c.SetOut(&out)
	c.SetErr(&out)
	c.SetArgs(args)
	c.SilenceUsage, c.SilenceErrors = true, true
	err := c.Execute()
	return out.String(), err
}
