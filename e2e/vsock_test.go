package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// vsockPeer is the guest half of TestVsock (testdata/vsockpeer), built
// static on the host by TestMain: compiling in the lab would take minutes.
var vsockPeer = os.Getenv("VIO_VSOCKPEER")

// buildGuestPrograms builds the Go programs guests run into dir and
// passes their paths on to the lab run.
func buildGuestPrograms(dir string) error {
	for _, p := range []struct {
		name string
		set  *string
		env  string
	}{{"vsockpeer", &vsockPeer, "VIO_VSOCKPEER"}, {"vfioblk", &vfioBlk, "VIO_VFIOBLK"}} {
		out := filepath.Join(dir, p.name)
		if err := labtest.Build(out, "./testdata/"+p.name); err != nil {
			return err
		}
		*p.set = out
		if err := os.Setenv(p.env, out); err != nil {
			return err
		}
	}
	return nil
}

const (
	vsockGuestPort = 1234 // the guest program listens here
	vsockHostPort  = 5000 // the guest program connects to the host here
	vsockBytes     = 1 << 20
)

var vsockGuest = `
timeout 300 ` + "%s" + ` ` + fmt.Sprint(vsockGuestPort, " ", vsockHostPort, " ", vsockBytes) + `
echo VIO-GUEST-DONE
poweroff -f
`

// sendRandom writes n random bytes to w and returns their SHA-256.
func sendRandom(w io.Writer, n int64) (string, error) {
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(w, h), rand.Reader, n); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

type vsockResult struct {
	received, sent string // SHA-256 of the data each way, as the host saw it
	err            error
}

// TestVsock: a host program and a guest program exchange data both ways
// through the hybrid vsock socket, over a connection the guest opens (to
// PATH_5000) and one the host opens (CONNECT 1234 on PATH), and each side's
// SHA-256 of what it received matches the other's of what it sent.
func TestVsock(t *testing.T) {
	if vsockPeer == "" {
		t.Fatal("VIO_VSOCKPEER is not set: run this package with go test, whose TestMain builds the guest program")
	}
	// Built before the clock starts: making the tools disk takes minutes
	// on a loaded machine, and the deadline is the guest's.
	initrd, tools := labtest.Guest{
		Script:   fmt.Sprintf(vsockGuest, vsockPeer),
		Modules:  []string{"virtio_pci", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"},
		Programs: []string{vsockPeer},
	}.Build(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "v.sock")
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", sock, vsockHostPort))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	// The guest's connection: read to EOF, answer with the sum and data.
	guestInit := make(chan vsockResult, 1)
	go func() {
		var r vsockResult
		defer func() { guestInit <- r }()
		c, err := ln.Accept()
		if err != nil {
			r.err = err
			return
		}
		defer c.Close()
		dl, _ := ctx.Deadline()
		c.SetDeadline(dl)
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil || n != vsockBytes {
			r.err = fmt.Errorf("read %d bytes of %d: %v", n, vsockBytes, err)
			return
		}
		r.received = hex.EncodeToString(h.Sum(nil))
		if _, err := fmt.Fprintf(c, "%s\n", r.received); err != nil {
			r.err = err
			return
		}
		r.sent, r.err = sendRandom(c, vsockBytes)
	}()

	serial := filepath.Join(dir, "serial.log")
	args := vioArgs(t, initrd, "--vsock", "cid=3,socket="+sock,
		"--disk", "path="+tools+",readonly=on", "--serial", "file="+serial, "--stats")
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var vioOut strings.Builder
	cmd.Stdout, cmd.Stderr = &vioOut, &vioOut
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	fail := func(format string, a ...any) {
		t.Helper()
		cancel()
		<-exited
		log, _ := os.ReadFile(serial)
		t.Fatalf(format+"\nvio:\n%s\nserial:\n%s", append(a, vioOut.String(), log)...)
	}

	var gi vsockResult
	select {
	case gi = <-guestInit:
	case err := <-exited:
		exited <- err
		fail("vio exited (%v) before the guest connected", err)
	}
	if gi.err != nil {
		fail("guest-initiated connection: %v", gi.err)
	}

	// The guest listens since before it connected: connect to it.
	c, err := net.Dial("unix", sock)
	if err != nil {
		fail("%v", err)
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	fmt.Fprintf(c, "CONNECT %d\n", vsockGuestPort)
	br := bufio.NewReader(c)
	ok, err := br.ReadString('\n')
	if err != nil || !regexp.MustCompile(`^OK \d+\n$`).MatchString(ok) {
		fail("host-initiated connection: answer %q, %v", ok, err)
	}
	hiSent, err := sendRandom(c, vsockBytes)
	if err != nil {
		fail("host-initiated send: %v", err)
	}
	c.(*net.UnixConn).CloseWrite()
	sumLine, err := br.ReadString('\n')
	if err != nil {
		fail("host-initiated: reading the guest's sum: %v", err)
	}
	h := sha256.New()
	n, err := io.Copy(h, br)
	if err != nil || n != vsockBytes {
		fail("host-initiated: read %d bytes of %d: %v", n, vsockBytes, err)
	}
	hiReceived := hex.EncodeToString(h.Sum(nil))

	var waitErr error
	select {
	case waitErr = <-exited:
	case <-ctx.Done():
		exited <- nil
		fail("vio did not exit")
	}
	t.Logf("vio ran for %v", time.Since(start).Round(time.Second))
	log, _ := os.ReadFile(serial)
	if waitErr != nil {
		t.Fatalf("vio: %v\n%s\nserial:\n%s", waitErr, vioOut.String(), log)
	}
	r := readReport(t, log)
	r.expect(t, "vsock-listen", "guest-initiated", "host-initiated")
	sums := map[string]string{}
	for _, v := range r.values["SUM"] {
		if f := strings.Fields(v); len(f) == 2 && len(f[1]) == 64 {
			sums[f[0]] = f[1]
		}
	}
	// guest-initiated: the guest compared the host's sum of what it
	// received with its own; the host compares the guest's of what the
	// host sent.
	if sums["guest-initiated-received"] != gi.sent {
		t.Errorf("guest-initiated, host to guest: host sent %s, guest received %s", gi.sent, sums["guest-initiated-received"])
	}
	if strings.TrimSpace(sumLine) != hiSent || sums["host-initiated-received"] != hiSent {
		t.Errorf("host-initiated, host to guest: host sent %s, guest received %s (line %q)", hiSent, sums["host-initiated-received"], sumLine)
	}
	if sums["host-initiated-sent"] != hiReceived {
		t.Errorf("host-initiated, guest to host: guest sent %s, host received %s", sums["host-initiated-sent"], hiReceived)
	}
	t.Logf("vio --stats:\n%s", vioOut.String())
}
