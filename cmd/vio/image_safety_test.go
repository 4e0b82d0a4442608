package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/nbd"
)

// forgedDisk is a raw disk whose guest wrote, from sector 0 on, a qcow2
// image (made by qemu-img, or vio when it is missing) with the host file
// secret as its raw backing file.
func forgedDisk(t *testing.T) (path string, guest []byte) {
	t.Helper()
	secret := filepath.Join(t.TempDir(), "shadow")
	os.WriteFile(secret, bytes.Repeat([]byte("HOST-SECRET!"), 1<<19), 0o600)
	q := filepath.Join(t.TempDir(), "h.qcow2")
	if _, err := exec.LookPath("qemu-img"); err == nil {
		if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", "-b", secret, "-F", "raw", q, "4M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img create: %v\n%s", err, out)
		}
	} else if out, err := runImage(t, "create", "-b", secret, "-F", "raw", q, "4M"); err != nil {
		t.Fatalf("vio image create: %v\n%s", err, out)
	}
	hdr, err := os.ReadFile(q)
	if err != nil {
		t.Fatal(err)
	}
	guest = make([]byte, 4<<20)
	copy(guest, hdr)
	path = filepath.Join(t.TempDir(), "guest.raw")
	os.WriteFile(path, guest, 0o644)
	return path, guest
}

// serveBG runs `vio image serve ARGS` and returns the first line of its
// stderr that has the banner's " as nbd" (with what came before it), or
// the error if serve ends first; stop stops it and returns its error.
func serveBG(t *testing.T, args ...string) (lines string, err error, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := imageCommand()
	c.SilenceUsage, c.SilenceErrors = true, true
	pr, pw := io.Pipe()
	c.SetOut(pw)
	c.SetErr(pw)
	c.SetArgs(append([]string{"serve"}, args...))
	done := make(chan error, 1)
	go func() { err := c.ExecuteContext(ctx); pw.CloseWithError(io.EOF); done <- err }()
	var got strings.Builder
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		got.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), " as nbd") {
			go io.Copy(io.Discard, pr)
			var once sync.Once
			var serr error
			return got.String(), nil, func() error {
				once.Do(func() { cancel(); serr = <-done })
				return serr
			}
		}
	}
	cancel()
	return got.String(), <-done, func() error { return nil }
}

// TestImageServeForgedHeader reproduces the finding through the NBD
// server: exporting the forged disk never exposes the host file. Without
// -f the backing file is refused and nothing is served; with -f raw the
// export holds the guest's bytes, read by our client and by qemu-img.
func TestImageServeForgedHeader(t *testing.T) {
	disk, guest := forgedDisk(t)
	sock := filepath.Join(t.TempDir(), "s")
	out, err, _ := serveBG(t, "--nbd", "unix:"+sock, disk)
	if !errors.Is(err, image.ErrBackingRefused) {
		t.Fatalf("serving the forged disk without -f: %v\n%s", err, out)
	}
	out, err, stop := serveBG(t, "-f", "raw", "--nbd", "unix:"+sock, disk)
	if err != nil {
		t.Fatalf("serve -f raw: %v\n%s", err, out)
	}
	defer stop()
	uri := "nbd+unix:///guest.raw?socket=" + sock
	cl, err := nbd.Dial(context.Background(), uri, nbd.Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, cl.Size())
	if _, err := cl.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(got, []byte("HOST-SECRET")) || !bytes.Equal(got, guest) {
		t.Error("the export does not hold exactly the guest's bytes")
	}
	if _, err := cl.WriteAt([]byte("x"), 0); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("write to a default (read-only) export: %v, want ErrReadOnly", err)
	}
	cl.Close()
	if _, err := exec.LookPath("qemu-img"); err == nil {
		flat := filepath.Join(t.TempDir(), "flat")
		if o, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, flat).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img convert from the export: %v\n%s", err, o)
		}
		b, _ := os.ReadFile(flat)
		if bytes.Contains(b, []byte("HOST-SECRET")) || !bytes.Equal(b, guest) {
			t.Error("qemu-img reads something else than the guest's bytes from the export")
		}
	}
	if err := stop(); err != nil {
		t.Errorf("serve: %v", err)
	}
}

// TestImageInfoForgedHeader: vio image info/convert/check refuse the
// forged disk's backing file unless given -f raw.
func TestImageInfoForgedHeader(t *testing.T) {
	disk, _ := forgedDisk(t)
	for _, args := range [][]string{{"info", disk}, {"check", disk}, {"convert", "-O", "raw", disk, filepath.Join(t.TempDir(), "o")}} {
		out, err := runImage(t, args...)
		if !errors.Is(err, image.ErrBackingRefused) || strings.Contains(out, "HOST-SECRET") {
			t.Errorf("vio image %s: %v\n%s", args[0], err, out)
		}
	}
	out, err := runImage(t, "info", "-f", "raw", "--output=json", disk)
	if err != nil || !strings.Contains(out, `"format": "raw"`) || strings.Contains(out, "backing") {
		t.Errorf("info -f raw: %v\n%s", err, out)
	}
	dst := filepath.Join(t.TempDir(), "o.raw")
	if out, err := runImage(t, "convert", "-f", "raw", "-O", "raw", disk, dst); err != nil {
		t.Errorf("convert -f raw: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(dst); bytes.Contains(b, []byte("HOST-SECRET")) {
		t.Error("convert -f raw copied the host file")
	}
	if _, err := runImage(t, "info", "-f", "vmdk", disk); err == nil || !strings.Contains(err.Error(), `unknown image format "vmdk"`) {
		t.Errorf("info -f vmdk: %v", err)
	}
}

// TestImageServeFlags: writable only when asked and with a format; a
// warning when the address is reachable from other hosts.
func TestImageServeFlags(t *testing.T) {
	img := filepath.Join(t.TempDir(), "d.raw")
	if out, err := runImage(t, "create", "-f", "raw", img, "1M"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	sock := filepath.Join(t.TempDir(), "s")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--writable", "--nbd", "unix:" + sock, img}, "--writable needs the image format"},
		{[]string{"--writable", "-r", "-f", "raw", "--nbd", "unix:" + sock, img}, "contradict"},
		{[]string{"-e", "0", "--nbd", "unix:" + sock, img}, "--max-connections 0"},
	} {
		out, err, stop := serveBG(t, c.args...)
		if err == nil {
			stop()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("serve %s: %v, want %q\n%s", strings.Join(c.args, " "), err, c.want, out)
		}
	}
	for addr, warn := range map[string]bool{"127.0.0.1:0": false, "0.0.0.0:0": true, "unix:" + sock: false} {
		out, err, stop := serveBG(t, "--nbd", addr, img)
		if err != nil {
			t.Fatalf("serve on %s: %v\n%s", addr, err, out)
		}
		if got := strings.Contains(out, "without TLS"); got != warn {
			t.Errorf("serve on %s: warning %v, want %v\n%s", addr, got, warn, out)
		}
		if err := stop(); err != nil {
			t.Errorf("serve on %s: %v", addr, err)
		}
	}
	// Writable with a format: a client writes.
	out, err, stop := serveBG(t, "--writable", "-f", "raw", "-e", "1", "--nbd", "unix:"+sock, img)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := nbd.Dial(ctx, "nbd+unix:///d.raw?socket="+sock, nbd.Options{ReconnectAttempts: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.WriteAt([]byte("w"), 0); err != nil {
		t.Errorf("write to a --writable export: %v", err)
	}
	if c2, err := nbd.Dial(ctx, "nbd+unix:///d.raw?socket="+sock, nbd.Options{ReconnectAttempts: -1}); err == nil {
		c2.Close()
		t.Error("a second client was served with -e 1")
	}
	cl.Close()
	stop()
}
