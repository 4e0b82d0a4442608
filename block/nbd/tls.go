package nbd

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// TLS credentials come from a directory laid out as QEMU's tls-creds-x509
// object expects (and libnbd's tls-certificates, and nbdkit's --tls-certificates):
//
//	ca-cert.pem      the certificate authority that signed the peer's certificate
//	server-cert.pem  a server's certificate (chain), PEM
//	server-key.pem   its private key, PEM
//	client-cert.pem  a client's certificate, optional
//	client-key.pem   its private key
//
// so one directory made for qemu-nbd --tls-creds serves vio as well.
const (
	caCertFile     = "ca-cert.pem"
	serverCertFile = "server-cert.pem"
	serverKeyFile  = "server-key.pem"
	clientCertFile = "client-cert.pem"
	clientKeyFile  = "client-key.pem"
)

// ServerTLSConfig loads a server's credentials from dir. With verifyPeer,
// every client must present a certificate signed by dir/ca-cert.pem (a
// client without one, or with another CA's, fails the TLS handshake);
// without it, any client may connect and the link is only encrypted.
// TLS 1.2 is the oldest version offered, as the NBD protocol asks.
func ServerTLSConfig(dir string, verifyPeer bool) (*tls.Config, error) {
	cert, err := loadKeyPair(dir, serverCertFile, serverKeyFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if verifyPeer {
		pool, err := loadCA(dir)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// ClientTLSConfig loads a client's credentials from dir: the CA that must
// have signed the server's certificate (dir/ca-cert.pem, required), and
// the client's own certificate (client-cert.pem and client-key.pem), if
// the directory has them, for servers that verify clients. serverName is
// checked against the server's certificate (its DNS or IP names).
func ClientTLSConfig(dir, serverName string) (*tls.Config, error) {
	pool, err := loadCA(dir)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
	_, errC := os.Stat(filepath.Join(dir, clientCertFile))
	_, errK := os.Stat(filepath.Join(dir, clientKeyFile))
	switch {
	case errC == nil && errK == nil:
		cert, err := loadKeyPair(dir, clientCertFile, clientKeyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	case errC == nil || errK == nil:
		return nil, fmt.Errorf("nbd: TLS credentials in %s: %s and %s go together; give both or neither", dir, clientCertFile, clientKeyFile)
	}
	return cfg, nil
}

func loadKeyPair(dir, certName, keyName string) (tls.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, certName), filepath.Join(dir, keyName)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Stat(p); err != nil {
			return tls.Certificate{}, credsError(dir, p, err)
		}
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("nbd: TLS credentials in %s: %s with %s: %w", dir, certName, keyName, err)
	}
	return cert, nil
}

func loadCA(dir string) (*x509.CertPool, error) {
	p := filepath.Join(dir, caCertFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, credsError(dir, p, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("nbd: TLS credentials: %s holds no PEM certificate", p)
	}
	return pool, nil
}

func credsError(dir, path string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("nbd: TLS credentials: %s is missing; the directory %s must hold ca-cert.pem and, for a server, server-cert.pem and server-key.pem (the layout of QEMU's tls-creds-x509)", path, dir)
	}
	return fmt.Errorf("nbd: TLS credentials: %w", err)
}
