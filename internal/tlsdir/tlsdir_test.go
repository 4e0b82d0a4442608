package tlsdir_test

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/internal/tlsdir"
	"github.com/viovmm/vio/internal/tlsdir/tlsdirtest"
)

// handshake runs one TLS handshake over loopback TCP (kernel-buffered,
// unlike net.Pipe, so that neither end's writes wait on the other's reads)
// and returns both ends' errors.
func handshake(t *testing.T, server, client *tls.Config) (serr, cerr error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	deadline := time.Now().Add(10 * time.Second)
	done := make(chan error, 1)
	go func() {
		a, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer a.Close()
		a.SetDeadline(deadline)
		s := tls.Server(a, server)
		err = s.Handshake()
		if err == nil {
			// TLS 1.3 finds a refused client certificate on the first read.
			_, err = s.Read(make([]byte, 1))
		}
		done <- err
	}()
	b, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	b.SetDeadline(deadline)
	c := tls.Client(b, client)
	cerr = c.Handshake()
	if cerr == nil {
		_, cerr = c.Write([]byte{1})
	}
	serr = <-done
	if cerr == nil && serr != nil {
		// The client learns of the refusal on its next read.
		_, cerr = c.Read(make([]byte, 1))
	}
	return serr, cerr
}

func TestMutualTLS(t *testing.T) {
	dir := tlsdirtest.Write(t, "vio test CA")
	srv, err := tlsdir.Server(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := tlsdir.Client(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if serr, cerr := handshake(t, srv, cli); serr != nil || cerr != nil {
		t.Fatalf("handshake with the right credentials: server %v, client %v", serr, cerr)
	}
	// A client without a certificate is refused when the server asks for one.
	bare, err := tlsdir.Client(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	bare.Certificates = nil
	if serr, _ := handshake(t, srv, bare); serr == nil {
		t.Error("the server accepted a client with no certificate")
	}
	// A client trusting another CA refuses the server.
	other, err := tlsdir.Client(tlsdirtest.Write(t, "another CA"), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if _, cerr := handshake(t, srv, other); cerr == nil {
		t.Error("a client trusting another CA accepted the server")
	}
	// The server's name must match what was dialled.
	wrong, _ := tlsdir.Client(dir, "vio.example")
	if _, cerr := handshake(t, srv, wrong); cerr == nil {
		t.Error("a server certificate for localhost passed as vio.example")
	}
}

func TestMissingFiles(t *testing.T) {
	dir := tlsdirtest.Write(t, "vio test CA")
	os.Remove(filepath.Join(dir, tlsdir.ClientKey))
	if _, err := tlsdir.Client(dir, "localhost"); err == nil || !strings.Contains(err.Error(), "has no client-key.pem") {
		t.Errorf("a client certificate without its key: %v", err)
	}
	os.Remove(filepath.Join(dir, tlsdir.ClientCert))
	if c, err := tlsdir.Client(dir, "localhost"); err != nil || tlsdir.HasCertificate(c) {
		t.Errorf("no client certificate: %v, certificate %v", err, c != nil && tlsdir.HasCertificate(c))
	}
	if _, err := tlsdir.Server(t.TempDir(), false); err == nil || !strings.Contains(err.Error(), "has no server-cert.pem") {
		t.Errorf("empty directory: %v", err)
	}
	os.WriteFile(filepath.Join(dir, tlsdir.CACert), []byte("not PEM"), 0o600)
	if _, err := tlsdir.Server(dir, true); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("garbage CA: %v", err)
	}
}
