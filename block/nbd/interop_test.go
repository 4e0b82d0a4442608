package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/raw"
)

// Interoperability with the reference tools: our client against qemu-nbd
// and nbd-server, and qemu-img / qemu-io / nbdinfo against our server. Each
// test skips, saying why, when its tool is not installed.

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (apt-get install %s)", name, map[string]string{
			"qemu-nbd": "qemu-utils", "qemu-img": "qemu-utils", "qemu-io": "qemu-utils",
			"nbd-server": "nbd-server", "nbdinfo": "libnbd-bin",
		}[name])
	}
	return p
}

// startTool runs a server process for the duration of the test; the
// returned channel is closed if it exits.
func startTool(t *testing.T, name string, args ...string) <-chan struct{} {
	t.Helper()
	cmd := exec.Command(name, args...)
	// Output to a file, not a pipe: a server's forked children would keep
	// a pipe open past the kill. Its own process group, so that the kill
	// reaches those children.
	out, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		out.Close()
		if t.Failed() {
			b, _ := os.ReadFile(out.Name())
			t.Logf("%s output:\n%s", name, b)
		}
	})
	return exited
}

// waitListening polls until something accepts on network/addr (a server
// process we started has no other way to tell us it is ready).
func waitListening(t *testing.T, network, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial(network, addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listening on %s %s: %v", network, addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitSocket waits for a server process to create its unix socket; false
// if the process exits first.
func waitSocket(path string, exited <-chan struct{}) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return true
		}
		select {
		case <-exited:
			return false
		case <-time.After(10 * time.Millisecond): // polling for the file
		}
	}
	return false
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func zeroFile(t *testing.T, size int64) string {
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestClientAgainstQemuNbd runs the conformance suite on our client talking
// to qemu-nbd over a unix socket.
func TestClientAgainstQemuNbd(t *testing.T) {
	qnbd := needTool(t, "qemu-nbd")
	blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
		img := zeroFile(t, size)
		sock := filepath.Join(t.TempDir(), "q.sock")
		startTool(t, qnbd, "-f", "raw", "-k", sock, "-x", "disk", "-t", "--shared=8", "--discard=unmap", img)
		waitListening(t, "unix", sock)
		return dial(t, unixURI(sock, "disk"), Options{})
	})
}

// TestClientAgainstQemuNbdReopen: what our client flushed and closed is
// there for the next client of the same qemu-nbd.
func TestClientAgainstQemuNbdReopen(t *testing.T) {
	qnbd := needTool(t, "qemu-nbd")
	blocktest.RunReopen(t, func(t *testing.T, size int64) func() (block.Backend, error) {
		img := zeroFile(t, size)
		sock := filepath.Join(t.TempDir(), "q.sock")
		startTool(t, qnbd, "-f", "raw", "-k", sock, "-x", "disk", "-t", img)
		waitListening(t, "unix", sock)
		return func() (block.Backend, error) {
			return Dial(context.Background(), unixURI(sock, "disk"), Options{})
		}
	})
}

// TestClientAgainstReadOnlyQemuNbd: NBD_FLAG_READ_ONLY from a real server
// makes writes fail locally with block.ErrReadOnly, reads still work.
func TestClientAgainstReadOnlyQemuNbd(t *testing.T) {
	qnbd := needTool(t, "qemu-nbd")
	img := zeroFile(t, 1<<20)
	if err := os.WriteFile(img, bytes.Repeat([]byte("ro"), 1<<19), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "q.sock")
	startTool(t, qnbd, "-r", "-f", "raw", "-k", sock, "-x", "disk", "-t", img)
	waitListening(t, "unix", sock)
	c := dial(t, unixURI(sock, "disk"), Options{})
	defer c.Close()
	if !c.ReadOnly() {
		t.Fatal("qemu-nbd -r export not reported read-only")
	}
	if _, err := c.WriteAt([]byte("x"), 0); !errors.Is(err, block.ErrReadOnly) {
		t.Fatalf("WriteAt: %v, want ErrReadOnly", err)
	}
	p := make([]byte, 4)
	if _, err := c.ReadAt(p, 1000); err != nil || string(p) != "roro" {
		t.Fatalf("ReadAt = %q, %v", p, err)
	}
}

// TestClientAgainstQemuNbdTCP checks data written by our client lands in
// the file qemu-nbd serves, over loopback TCP.
func TestClientAgainstQemuNbdTCP(t *testing.T) {
	qnbd := needTool(t, "qemu-nbd")
	img := zeroFile(t, 8<<20)
	port := freePort(t)
	exited := startTool(t, qnbd, "-f", "raw", "-b", "127.0.0.1", "-p", strconv.Itoa(port), "-x", "disk", "-t", img)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitListening(t, "tcp", addr)
	select {
	case <-exited:
		// Someone else took the port between freePort and qemu-nbd.
		t.Skip("qemu-nbd could not listen on the port picked for it")
	default:
	}
	c := dial(t, "nbd://"+addr+"/disk", Options{})
	want := make([]byte, 3<<20)
	rng := rand.New(rand.NewPCG(3, 3))
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	if _, err := c.WriteAt(want, 12345); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[12345:12345+len(want)], want) {
		t.Fatal("file behind qemu-nbd does not hold what the client wrote")
	}
}

// TestClientAgainstNbdServer runs the conformance suite on our client
// talking to the reference nbd-server (which uses simple replies only).
func TestClientAgainstNbdServer(t *testing.T) {
	nbdServer := needTool(t, "nbd-server")
	blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
		img := zeroFile(t, size)
		sock := filepath.Join(t.TempDir(), "nbd.sock")
		// nbd-server always listens on TCP too; we connect over the unix
		// socket, whose path is ours alone. If the TCP port we picked was
		// taken meanwhile, it exits, and we try another.
		for attempt := 0; ; attempt++ {
			cfg := filepath.Join(t.TempDir(), "config")
			conf := fmt.Sprintf("[generic]\n\tlistenaddr = 127.0.0.1\n\tport = %d\n\tunixsock = %s\n\tallowlist = true\n"+
				"[disk]\n\texportname = %s\n\tflush = true\n\tfua = true\n\ttrim = true\n", freePort(t), sock, img)
			if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
			// -d: stay in the foreground, serving one client.
			exited := startTool(t, nbdServer, "-C", cfg, "-d")
			if waitSocket(sock, exited) {
				break
			}
			if attempt == 3 {
				t.Fatal("nbd-server did not start")
			}
		}
		// The one connection nbd-server -d serves is this one. The socket
		// file exists from bind() on, but connections are refused until
		// listen(): retry only on that (a refused connection does not use
		// up the one).
		var c *Client
		for deadline := time.Now().Add(10 * time.Second); ; {
			var err error
			c, err = Dial(context.Background(), unixURI(sock, "disk"), Options{})
			if err == nil {
				break
			}
			if !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
				t.Fatalf("Dial nbd-server: %v", err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if c.structured {
			t.Log("nbd-server negotiated structured replies")
		}
		return c
	})
}

// rawExport serves a raw image file with our server and returns the file's
// path and the server's unix socket and TCP address.
func rawExport(t *testing.T, size int64) (img, sock, addr string, f *raw.File) {
	img = zeroFile(t, size)
	f, err := raw.Open(img, raw.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	s, sock := serve(t, Export{Name: "disk", Backend: f, Description: "a raw file"})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	return img, sock, l.Addr().String(), f
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestQemuImgAgainstServer: qemu-img info and convert in both directions
// through our server.
func TestQemuImgAgainstServer(t *testing.T) {
	qemuImg := needTool(t, "qemu-img")
	const size = 6<<20 + 512
	_, sock, addr, f := rawExport(t, size)
	uriUnix := "nbd+unix:///disk?socket=" + sock

	info := run(t, qemuImg, "info", "--output=json", uriUnix)
	if !strings.Contains(info, fmt.Sprintf(`"virtual-size": %d`, size)) {
		t.Fatalf("qemu-img info does not report %d bytes:\n%s", size, info)
	}

	// A source image with data, a zero run and a tail, copied into the
	// export over TCP...
	src := filepath.Join(t.TempDir(), "src.raw")
	want := make([]byte, size)
	rng := rand.New(rand.NewPCG(5, 5))
	for i := range want {
		if i < 1<<20 || i > 3<<20 {
			want[i] = byte(rng.Uint32())
		}
	}
	if err := os.WriteFile(src, want, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, qemuImg, "convert", "-n", "-f", "raw", "-O", "raw", src, "nbd://"+addr+"/disk")
	got := make([]byte, size)
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("qemu-img convert into the export stored wrong data")
	}

	// ...and back out of it over the unix socket.
	out := filepath.Join(t.TempDir(), "out.raw")
	run(t, qemuImg, "convert", "-f", "raw", "-O", "raw", uriUnix, out)
	back, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, want) {
		t.Fatal("qemu-img convert out of the export read wrong data")
	}
	run(t, qemuImg, "compare", "-f", "raw", "-F", "raw", src, uriUnix)
}

// TestQemuIoAgainstServer writes with qemu-io and reads back through the
// back-end, and the other way round, including write-zeroes, discard,
// concurrent AIO and flush.
func TestQemuIoAgainstServer(t *testing.T) {
	qemuIo := needTool(t, "qemu-io")
	_, sock, addr, f := rawExport(t, 4<<20)
	uriTCP := "nbd://" + addr + "/disk"

	run(t, qemuIo, "-f", "raw", uriTCP,
		"-c", "write -P 0xab 4096 65536",
		"-c", "aio_write -P 0x11 1048576 131072",
		"-c", "aio_write -P 0x22 2097152 131072",
		"-c", "aio_flush",
		"-c", "write -z 8192 4096",
		"-c", "flush")
	check := func(off, n int64, pat byte) {
		t.Helper()
		p := make([]byte, n)
		if _, err := f.ReadAt(p, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, bytes.Repeat([]byte{pat}, int(n))) {
			t.Fatalf("%d bytes at %d: want all %#x", n, off, pat)
		}
	}
	check(4096, 4096, 0xab)
	check(8192, 4096, 0) // zeroed by write -z
	check(12288, 65536-8192, 0xab)
	check(1<<20, 128<<10, 0x11)
	check(2<<20, 128<<10, 0x22)

	// The other way: the back-end writes, qemu-io verifies over the
	// unix socket.
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xcd}, 8192), 3<<20); err != nil {
		t.Fatal(err)
	}
	out := run(t, qemuIo, "-r", "-f", "raw", "nbd+unix:///disk?socket="+sock,
		"-c", "read -P 0xcd 3145728 8192",
		"-c", "read -P 0x0 3153920 4096")
	if strings.Contains(out, "Pattern verification failed") || !strings.Contains(out, "read 8192/8192") {
		t.Fatalf("qemu-io read through the export:\n%s", out)
	}
	// And a mismatch is noticed (the oracle can fail).
	bad, err := exec.Command(qemuIo, "-r", "-f", "raw", "nbd+unix:///disk?socket="+sock, "-c", "read -P 0xce 3145728 512").CombinedOutput()
	if err == nil || !strings.Contains(string(bad), "Pattern verification failed") {
		t.Fatalf("qemu-io did not notice a wrong pattern (%v):\n%s", err, bad)
	}
	run(t, qemuIo, "-f", "raw", uriTCP, "-c", "discard 0 65536")
}

// TestNbdinfoAgainstServer lists the exports with libnbd's nbdinfo.
func TestNbdinfoAgainstServer(t *testing.T) {
	nbdinfo := needTool(t, "nbdinfo")
	_, sock, _, _ := rawExport(t, 1<<20)
	out := run(t, nbdinfo, "--list", "nbd+unix:///?socket="+sock)
	if !strings.Contains(out, `export="disk"`) || !strings.Contains(out, "a raw file") {
		t.Fatalf("nbdinfo --list:\n%s", out)
	}
	out = run(t, nbdinfo, "--size", "nbd+unix:///disk?socket="+sock)
	if strings.TrimSpace(out) != "1048576" {
		t.Fatalf("nbdinfo --size = %q", out)
	}
}

// TestFioVerifyAgainstServer: fio's nbd engine (libnbd, 16 requests in
// flight) writes checksummed blocks through our server and verifies them
// on read-back.
func TestFioVerifyAgainstServer(t *testing.T) {
	fio := needTool(t, "fio")
	if out, _ := exec.Command(fio, "--enghelp").CombinedOutput(); !strings.Contains(string(out), "\tnbd\n") {
		t.Skip("this fio has no nbd engine")
	}
	_, sock, _, _ := rawExport(t, 8<<20)
	out := run(t, fio, "--name=verify", "--ioengine=nbd", "--uri=nbd+unix:///disk?socket="+sock,
		"--rw=randwrite", "--bs=4k", "--bsrange=512-64k", "--iodepth=16", "--size=8M",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0", "--verify_state_save=0")
	if !strings.Contains(out, "verify") && !strings.Contains(out, "WRITE") {
		t.Fatalf("unexpected fio output:\n%s", out)
	}
	// And the oracle can fail: verifying a region never written fails.
	bad, err := exec.Command(fio, "--name=bad", "--ioengine=nbd", "--uri=nbd+unix:///disk?socket="+sock,
		"--rw=read", "--bs=4k", "--size=8M", "--offset=0", "--verify=crc32c", "--verify_only=1",
		"--verify_fatal=1", "--verify_pattern=0x5a5a5a5a", "--verify_state_save=0").CombinedOutput()
	if err == nil || !strings.Contains(string(bad), "verify: bad") {
		t.Fatalf("fio verified a pattern that was never written (%v):\n%s", err, bad)
	}
}
