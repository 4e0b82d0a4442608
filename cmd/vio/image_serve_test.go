package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/block/nbd"
)

// TestImageServe exports a qcow2 image with `vio image serve`, writes and
// reads it through NBD (our client, and qemu-img when installed), stops the
// server, and checks the image holds the data.
func TestImageServe(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	if out, err := runImage(t, "create", img, "8M"); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	second := filepath.Join(dir, "second.qcow2")
	if out, err := runImage(t, "create", second, "4M"); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "nbd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := imageCommand()
	var out bytes.Buffer
	c.SetOut(&out)
	c.SetErr(&out)
	c.SetArgs([]string{"serve", "--writable", "-f", "qcow2", "--nbd", "unix:" + sock, img, second})
	done := make(chan error, 1)
	go func() { done <- c.ExecuteContext(ctx) }()

	uri := "nbd+unix:///disk.qcow2?socket=" + sock
	var cl *nbd.Client
	for deadline := time.Now().Add(10 * time.Second); ; {
		var err error
		if cl, err = nbd.Dial(ctx, uri, nbd.Options{}); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("cannot reach the export: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // polling for the socket to appear
	}
	if cl.Size() != 8<<20 {
		t.Fatalf("export size %d", cl.Size())
	}
	c2, err := nbd.Dial(ctx, "nbd+unix:///second.qcow2?socket="+sock, nbd.Options{})
	if err != nil {
		t.Fatalf("second export: %v", err)
	}
	if c2.Size() != 4<<20 {
		t.Fatalf("second export size %d", c2.Size())
	}
	c2.Close()
	if _, err := cl.WriteAt([]byte("over nbd"), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	if qemuImg, err := exec.LookPath("qemu-img"); err == nil {
		info, err := exec.Command(qemuImg, "info", "--output=json", uri).CombinedOutput()
		if err != nil || !strings.Contains(string(info), `"virtual-size": 8388608`) {
			t.Fatalf("qemu-img info through vio image serve: %v\n%s", err, info)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v\n%s", err, out.String())
	}
	if _, err := os.Stat(sock); err == nil {
		t.Error("the unix socket was left behind")
	}
	// The data is in the image: read it back with qemu-img if there is
	// one, else by exporting again.
	if qemuImg, err := exec.LookPath("qemu-img"); err == nil {
		raw := filepath.Join(dir, "flat.raw")
		if o, err := exec.Command(qemuImg, "convert", "-O", "raw", img, raw).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img convert: %v\n%s", err, o)
		}
		data, err := os.ReadFile(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(data[1<<20 : 1<<20+8]); got != "over nbd" {
			t.Fatalf("image holds %q after serving", got)
		}
	}
	if !strings.Contains(out.String(), "serving "+img) {
		t.Errorf("no banner in the output:\n%s", out.String())
	}
}
