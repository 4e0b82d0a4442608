package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/nbd/nbdtest"
	"github.com/viovmm/vio/block/raw"
)

// logBuf collects a server's log lines, to tell why it dropped a client.
type logBuf struct {
	mu      sync.Mutex
	b       strings.Builder
	written chan struct{} // closed and replaced on every line
}

func (l *logBuf) logf(format string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(&l.b, format+"\n", a...)
	if l.written != nil {
		close(l.written)
		l.written = nil
	}
}

// waitCount waits until the log holds sub at least n times, or for d:
// the server logs a refused handshake on its own goroutine, which may run
// after the client has already exited.
func (l *logBuf) waitCount(sub string, n int, d time.Duration) bool {
	deadline := time.After(d)
	for {
		l.mu.Lock()
		if strings.Count(l.b.String(), sub) >= n {
			l.mu.Unlock()
			return true
		}
		if l.written == nil {
			l.written = make(chan struct{})
		}
		w := l.written
		l.mu.Unlock()
		select {
		case <-w:
		case <-deadline:
			return false
		}
	}
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// tlsExport serves a raw image holding a known pattern over TCP with TLS
// required; verifyPeer asks clients for certificates.
func tlsExport(t *testing.T, creds nbdtest.Creds, verifyPeer bool) (port string, pattern []byte, log *logBuf) {
	t.Helper()
	const size = 1 << 20
	img := zeroFile(t, size)
	f, err := raw.Open(img, raw.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	pattern = bytes.Repeat([]byte("vio-tls!"), 512)
	if _, err := f.WriteAt(pattern, 4096); err != nil {
		t.Fatal(err)
	}
	cfg, err := ServerTLSConfig(creds.Server, verifyPeer)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewServer(Export{Name: "disk", Backend: f, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	s.TLSConfig = cfg
	log = &logBuf{}
	s.Logf = log.logf
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(l)
	}()
	t.Cleanup(func() {
		s.Close()
		<-done
		if t.Failed() {
			t.Logf("server log:\n%s", log)
		}
	})
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port), pattern, log
}

// qemuTLS runs a qemu tool against our export with the client credentials
// in dir ("" for none: a plain connection) and returns its output and
// whether it succeeded.
func qemuTLS(t *testing.T, tool, dir, port string, args ...string) (string, bool) {
	t.Helper()
	opts := "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=" + port + ",export=disk"
	var full []string
	if dir != "" {
		full = append(full, "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+dir)
		opts += ",tls-creds=tls0"
	}
	switch tool {
	case "qemu-img":
		full = append([]string{"info"}, append(full, "--image-opts", opts)...)
	case "qemu-io":
		full = append(full, "-r", "--image-opts", opts)
	}
	full = append(full, args...)
	out, err := exec.Command(tool, full...).CombinedOutput()
	return string(out), err == nil
}

// TestQemuOverTLS: qemu-img and qemu-io read vio's export over TLS with
// openssl-made certificates; the data read is the data stored.
func TestQemuOverTLS(t *testing.T) {
	needTool(t, "qemu-img")
	needTool(t, "qemu-io")
	creds := nbdtest.MakeCreds(t)
	port, _, _ := tlsExport(t, creds, false)
	out, ok := qemuTLS(t, "qemu-img", creds.Anon, port)
	if !ok || !strings.Contains(out, "virtual size: 1 MiB") {
		t.Fatalf("qemu-img info over TLS (ok=%v):\n%s", ok, out)
	}
	// qemu-io -P checks every byte of the range against a pattern byte:
	// 'v' (0x76) repeats every 8 bytes of ours, so read one byte of each.
	out, ok = qemuTLS(t, "qemu-io", creds.Anon, port, "-c", "read -P 0x76 4096 1", "-c", "read -P 0x21 4103 1", "-c", "read -P 0 0 4096")
	if !ok || strings.Contains(out, "Pattern verification failed") || strings.Count(out, "read 1/1 bytes") != 2 {
		t.Fatalf("qemu-io over TLS (ok=%v):\n%s", ok, out)
	}
}

// TestTLSClientCertificates: with client verification on, a client with a
// certificate from the CA reads; one without a certificate, and one whose
// certificate another CA signed, fail the TLS handshake, as the server's
// log says.
func TestTLSClientCertificates(t *testing.T) {
	needTool(t, "qemu-img")
	creds := nbdtest.MakeCreds(t)
	port, _, log := tlsExport(t, creds, true)
	if out, ok := qemuTLS(t, "qemu-img", creds.Client, port); !ok || !strings.Contains(out, "virtual size: 1 MiB") {
		t.Fatalf("qemu-img info with a client certificate (ok=%v):\n%s", ok, out)
	}
	if strings.Contains(log.String(), "TLS handshake") {
		t.Fatalf("a good client made the server log a handshake failure:\n%s", log)
	}
	out, ok := qemuTLS(t, "qemu-img", creds.Anon, port)
	if ok || strings.Contains(out, "virtual size") {
		t.Fatalf("a client without a certificate read the export:\n%s", out)
	}
	if !log.waitCount("TLS handshake", 1, 10*time.Second) || !strings.Contains(log.String(), "certificate") {
		t.Fatalf("the server did not refuse the client without a certificate in the TLS handshake; qemu-img said:\n%s\nserver log:\n%s", out, log)
	}
	// qemu checks its own client certificate against its CA before
	// connecting, so the rogue certificate goes through libnbd.
	nbdinfo := needTool(t, "nbdinfo")
	before := strings.Count(log.String(), "TLS handshake")
	b, err := exec.Command(nbdinfo, "--size", "nbds://127.0.0.1:"+port+"/disk?tls-certificates="+creds.Rogue).CombinedOutput()
	if err == nil {
		t.Fatalf("nbdinfo with a certificate from another CA read the size: %s", b)
	}
	if !log.waitCount("TLS handshake", before+1, 10*time.Second) || strings.Count(log.String(), "TLS handshake") != before+1 {
		t.Fatalf("the server did not refuse the rogue certificate in the TLS handshake; nbdinfo said:\n%s\nserver log:\n%s", b, log)
	}
	b, err = exec.Command(nbdinfo, "--size", "nbds://127.0.0.1:"+port+"/disk?tls-certificates="+creds.Client).CombinedOutput()
	if err != nil || strings.TrimSpace(string(b)) != "1048576" {
		t.Fatalf("nbdinfo with a good certificate: %v: %s", err, b)
	}
}

// TestPlainClientRefusedByTLSServer: clients that do not start TLS learn
// that it is required and read nothing.
func TestPlainClientRefusedByTLSServer(t *testing.T) {
	needTool(t, "qemu-img")
	nbdinfo := needTool(t, "nbdinfo")
	creds := nbdtest.MakeCreds(t)
	port, _, _ := tlsExport(t, creds, false)
	out, ok := qemuTLS(t, "qemu-img", "", port)
	if ok || !strings.Contains(out, "TLS") {
		t.Fatalf("qemu-img without TLS (ok=%v), want a refusal naming TLS:\n%s", ok, out)
	}
	b, err := exec.Command(nbdinfo, "--list", "nbd://127.0.0.1:"+port).CombinedOutput()
	if err == nil || strings.Contains(string(b), "disk") {
		t.Fatalf("nbdinfo --list without TLS listed the exports: %s", b)
	}
}

// optReplies decodes the option replies in a server's output after its
// 18-byte greeting: (option, reply type) pairs, and whatever follows the
// last whole reply.
func optReplies(t *testing.T, out []byte) (reps [][2]uint32, rest []byte) {
	t.Helper()
	if len(out) < 18 {
		t.Fatalf("server output of %d bytes has no greeting", len(out))
	}
	out = out[18:]
	for len(out) >= optReplyHeaderSize && binary.BigEndian.Uint64(out) == magicOptReply {
		n := int(binary.BigEndian.Uint32(out[16:]))
		if len(out) < optReplyHeaderSize+n {
			break
		}
		reps = append(reps, [2]uint32{binary.BigEndian.Uint32(out[8:]), binary.BigEndian.Uint32(out[12:])})
		out = out[optReplyHeaderSize+n:]
	}
	return reps, out
}

func tlsOnlyServer(t testing.TB, creds nbdtest.Creds) *Server {
	t.Helper()
	cfg, err := ServerTLSConfig(creds.Server, false)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewServer(Export{Name: "d", Backend: blocktest.NewMem(64 << 10)})
	if err != nil {
		t.Fatal(err)
	}
	s.TLSConfig = cfg
	return s
}

// TestTLSRequiredOptionGate: before STARTTLS, a TLS-only server answers
// every option but STARTTLS and ABORT with NBD_REP_ERR_TLS_REQD, lists no
// export, and hangs up on NBD_OPT_EXPORT_NAME (which cannot be refused)
// without entering transmission.
func TestTLSRequiredOptionGate(t *testing.T) {
	s := tlsOnlyServer(t, nbdtest.MakeCreds(t))
	in := join(clientHello(flagCFixedNewstyle|flagCNoZeroes),
		clientOpt(optList, nil), clientOpt(optStructuredReply, nil), clientOpt(optInfo, goData("d")), clientOpt(optGo, goData("d")),
		clientOpt(optExportName, []byte("d")), clientReq(cmdRead, 0, 1, 0, 512, nil))
	fc := &fakeConn{r: bytes.NewReader(in), keep: true}
	s.ServeConn(fc)
	reps, rest := optReplies(t, fc.out.Bytes())
	want := [][2]uint32{{optList, repErrTLSReqd}, {optStructuredReply, repErrTLSReqd}, {optInfo, repErrTLSReqd}, {optGo, repErrTLSReqd}}
	if fmt.Sprint(reps) != fmt.Sprint(want) || len(rest) != 0 {
		t.Fatalf("replies %v (then %d bytes), want %v and nothing after", reps, len(rest), want)
	}
	// A client without fixed newstyle cannot start TLS at all.
	fc = &fakeConn{r: bytes.NewReader(join(clientHello(0), clientOpt(optExportName, []byte("d")))), keep: true}
	s.ServeConn(fc)
	if fc.out.Len() != 18 {
		t.Fatalf("a plain old-style client got %d bytes past the greeting", fc.out.Len()-18)
	}
}

// TestTLSStartTLSInjection: bytes a client sends after NBD_OPT_STARTTLS
// but before the TLS handshake came in the clear (anyone on the path can
// add them): the server drops the connection rather than acting on them.
// STARTTLS with data is invalid and answered as such.
func TestTLSStartTLSInjection(t *testing.T) {
	s := tlsOnlyServer(t, nbdtest.MakeCreds(t))
	log := &logBuf{}
	s.Logf = log.logf
	in := join(clientHello(flagCFixedNewstyle|flagCNoZeroes),
		clientOpt(optStartTLS, []byte("x")),
		clientOpt(optStartTLS, nil), clientOpt(optGo, goData("d")))
	fc := &fakeConn{r: bytes.NewReader(in), keep: true}
	s.ServeConn(fc)
	reps, rest := optReplies(t, fc.out.Bytes())
	want := [][2]uint32{{optStartTLS, repErrInvalid}, {optStartTLS, repAck}}
	if fmt.Sprint(reps) != fmt.Sprint(want) || len(rest) != 0 {
		t.Fatalf("replies %v (then %d bytes), want %v and nothing after", reps, len(rest), want)
	}
	if !strings.Contains(log.String(), "after NBD_OPT_STARTTLS") {
		t.Fatalf("server log does not name the injected bytes:\n%s", log)
	}
}

// TestClientTLS: vio's client against vio's server with client
// certificates required: the CA's client reads and writes nothing it
// should not; a client without a certificate and a client without TLS are
// refused with errors that say so; a TLS client refuses a plain server.
func TestClientTLS(t *testing.T) {
	creds := nbdtest.MakeCreds(t)
	port, pattern, _ := tlsExport(t, creds, true)
	uri := "nbd://127.0.0.1:" + port + "/disk"
	cfg, err := ClientTLSConfig(creds.Client, "")
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, uri, Options{TLS: cfg})
	got := make([]byte, len(pattern))
	if _, err := c.ReadAt(got, 4096); err != nil || !bytes.Equal(got, pattern) {
		t.Fatalf("read over TLS: %v, data equal %v", err, bytes.Equal(got, pattern))
	}
	c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	anon, err := ClientTLSConfig(creds.Anon, "")
	if err != nil {
		t.Fatal(err)
	}
	if c, err := Dial(ctx, uri, Options{TLS: anon, ReconnectAttempts: -1}); err == nil {
		c.Close()
		t.Fatal("a client without a certificate connected")
	}
	if c, err := Dial(ctx, uri, Options{ReconnectAttempts: -1}); err == nil || !strings.Contains(err.Error(), "requires TLS") {
		if c != nil {
			c.Close()
		}
		t.Fatalf("plain client against a TLS server: %v, want an error saying TLS is required", err)
	}
	// A server name the certificate does not carry.
	wrong, _ := ClientTLSConfig(creds.Client, "example.org")
	if c, err := Dial(ctx, uri, Options{TLS: wrong, ReconnectAttempts: -1}); err == nil || !strings.Contains(err.Error(), "certificate") {
		if c != nil {
			c.Close()
		}
		t.Fatalf("client checking for another name: %v, want a certificate error", err)
	}
	_, sock := serve(t, Export{Name: "plain", Backend: blocktest.NewMem(1 << 20)})
	cfg.ServerName = "localhost"
	if c, err := Dial(ctx, unixURI(sock, "plain"), Options{TLS: cfg, ReconnectAttempts: -1}); err == nil || !strings.Contains(err.Error(), "refused TLS") {
		if c != nil {
			c.Close()
		}
		t.Fatalf("TLS client against a plain server: %v, want it to refuse", err)
	}
}

// TestClientTLSAgainstQemuNbd: vio's client reads from qemu-nbd serving
// with --tls-creds and verify-peer, using the same credential directories.
func TestClientTLSAgainstQemuNbd(t *testing.T) {
	qemuNbd := needTool(t, "qemu-nbd")
	creds := nbdtest.MakeCreds(t)
	img := zeroFile(t, 1<<20)
	want := bytes.Repeat([]byte("qemu-tls"), 64)
	if err := os.WriteFile(img, append(make([]byte, 8192), want...), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	exited := startTool(t, qemuNbd, "--object", "tls-creds-x509,id=tls0,endpoint=server,verify-peer=yes,dir="+creds.Server,
		"--tls-creds", "tls0", "-f", "raw", "-x", "disk", "-b", "127.0.0.1", "-p", strconv.Itoa(port), "-r", img)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	waitListening(t, "tcp", addr)
	select {
	case <-exited:
		t.Fatal("qemu-nbd exited")
	default:
	}
	cfg, err := ClientTLSConfig(creds.Client, "")
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, "nbd://"+addr+"/disk", Options{TLS: cfg})
	defer c.Close()
	got := make([]byte, len(want))
	if _, err := c.ReadAt(got, 8192); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read from qemu-nbd over TLS: %v, %q", err, got[:16])
	}
}
