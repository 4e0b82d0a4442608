package nbd

import (
	"crypto/tls"

	"github.com/viovmm/vio/internal/tlsdir"
)

// TLS credentials come from a directory laid out as QEMU's tls-creds-x509
// object expects (and libnbd's tls-certificates, and nbdkit's
// --tls-certificates): ca-cert.pem, server-cert.pem and server-key.pem,
// client-cert.pem and client-key.pem (package tlsdir), so one directory
// made for qemu-nbd --tls-creds serves vio as well. TLS 1.2 is the oldest
// version offered, as the NBD protocol asks.

// ServerTLSConfig loads a server's credentials from dir. With verifyPeer,
// every client must present a certificate signed by dir/ca-cert.pem (a
// client without one, or with another CA's, fails the TLS handshake);
// without it, any client may connect and the link is only encrypted.
func ServerTLSConfig(dir string, verifyPeer bool) (*tls.Config, error) {
	return tlsdir.Server(dir, verifyPeer)
}

// ClientTLSConfig loads a client's credentials from dir: the CA that must
// have signed the server's certificate (dir/ca-cert.pem, required), and
// the client's own certificate (client-cert.pem and client-key.pem), if
// the directory has them, for servers that verify clients. serverName is
// checked against the server's certificate (its DNS or IP names).
func ClientTLSConfig(dir, serverName string) (*tls.Config, error) {
	return tlsdir.Client(dir, serverName)
}
