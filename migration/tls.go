package migration

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"github.com/viovmm/vio/internal/tlsdir"
)

// Migrations between hosts may run over mutual TLS, with credentials laid
// out as Cloud Hypervisor's tls_dir (package tlsdir): the sender presents
// client-cert.pem and checks the receiver's certificate against
// ca-cert.pem; the receiver presents server-cert.pem and accepts only
// senders whose certificate ca-cert.pem signed. Guest memory then never
// crosses the network in clear, and nobody but a holder of a client
// certificate can push a VM into a waiting receiver.

// SenderTLS loads the sending end's TLS configuration for endpoint e from
// dir. TLS is for tcp: endpoints only.
func SenderTLS(e Endpoint, dir string) (*tls.Config, error) {
	if e.Network != "tcp" {
		return nil, &urlError{fmt.Sprintf("TLS is for tcp:HOST:PORT migrations; %s stays on this host: leave out tls_dir", e)}
	}
	host, _, err := net.SplitHostPort(e.Address)
	if err != nil {
		return nil, &urlError{fmt.Sprintf("migration URL %s: %v", e, err)}
	}
	c, err := tlsdir.Client(dir, host)
	if err != nil {
		return nil, &urlError{err.Error()}
	}
	if !tlsdir.HasCertificate(c) {
		return nil, &urlError{fmt.Sprintf("TLS credentials: %s has no %s and %s: a receiver takes migrations only from senders with a certificate", dir, tlsdir.ClientCert, tlsdir.ClientKey)}
	}
	return c, nil
}

// ReceiverTLS loads the receiving end's TLS configuration for endpoint e
// from dir: senders must present a certificate its ca-cert.pem signed.
func ReceiverTLS(e Endpoint, dir string) (*tls.Config, error) {
	if e.Network != "tcp" {
		return nil, &urlError{fmt.Sprintf("TLS is for tcp:HOST:PORT migrations; %s stays on this host: leave out tls_dir", e)}
	}
	c, err := tlsdir.Server(dir, true)
	if err != nil {
		return nil, &urlError{err.Error()}
	}
	return c, nil
}

// Secure runs the TLS handshake on conn within ctx, as the sender (the
// TLS client) or the receiver, and returns the protected connection. On
// failure conn is closed.
func Secure(ctx context.Context, conn net.Conn, cfg *tls.Config, receiver bool) (net.Conn, error) {
	var tc *tls.Conn
	if receiver {
		tc = tls.Server(conn, cfg)
	} else {
		tc = tls.Client(conn, cfg)
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		peer := "destination"
		if receiver {
			peer = "sender"
		}
		return nil, fmt.Errorf("TLS handshake with the migration %s %s failed: %w", peer, conn.RemoteAddr(), err)
	}
	return tc, nil
}
