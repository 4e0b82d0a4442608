// Package tlsdir loads X.509 credentials kept as a directory of PEM files,
// the layout QEMU's tls-creds-x509 object and Cloud Hypervisor's tls_dir
// use, so one directory serves all three:
//
//	ca-cert.pem                     the CA that signed the peer's certificate
//	server-cert.pem, server-key.pem this end's certificate when it accepts
//	client-cert.pem, client-key.pem this end's certificate when it connects
package tlsdir

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File names in a credentials directory.
const (
	CACert     = "ca-cert.pem"
	ServerCert = "server-cert.pem"
	ServerKey  = "server-key.pem"
	ClientCert = "client-cert.pem"
	ClientKey  = "client-key.pem"
)

// Server returns the configuration for the accepting end: its certificate
// from server-cert.pem and server-key.pem; with verifyClients, every client
// must present a certificate signed by ca-cert.pem.
func Server(dir string, verifyClients bool) (*tls.Config, error) {
	cert, err := keyPair(dir, ServerCert, ServerKey)
	if err != nil {
		return nil, err
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if verifyClients {
		pool, err := caPool(dir)
		if err != nil {
			return nil, err
		}
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// Client returns the configuration for the connecting end: it trusts the
// servers ca-cert.pem signed, checked against serverName (a host name or
// an IP address, as in the URL dialled), and presents client-cert.pem and
// client-key.pem if the directory has them (one without the other is an
// error), for servers that verify their clients.
func Client(dir, serverName string) (*tls.Config, error) {
	pool, err := caPool(dir)
	if err != nil {
		return nil, err
	}
	c := &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
	_, errC := os.Stat(filepath.Join(dir, ClientCert))
	_, errK := os.Stat(filepath.Join(dir, ClientKey))
	switch {
	case errC == nil && errK == nil:
		cert, err := keyPair(dir, ClientCert, ClientKey)
		if err != nil {
			return nil, err
		}
		c.Certificates = []tls.Certificate{cert}
	case errC == nil:
		return nil, missing(dir, ClientKey, errK)
	case errK == nil:
		return nil, missing(dir, ClientCert, errC)
	}
	return c, nil
}

// HasCertificate reports whether c presents a certificate of its own.
func HasCertificate(c *tls.Config) bool { return len(c.Certificates) > 0 }

func caPool(dir string) (*x509.CertPool, error) {
	p := filepath.Join(dir, CACert)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, missing(dir, CACert, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("TLS credentials: %s holds no PEM certificate", p)
	}
	return pool, nil
}

func keyPair(dir, certName, keyName string) (tls.Certificate, error) {
	for _, n := range []string{certName, keyName} {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			return tls.Certificate{}, missing(dir, n, err)
		}
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, certName), filepath.Join(dir, keyName))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("TLS credentials in %s: %s and %s do not make a certificate and its key: %v", dir, certName, keyName, err)
	}
	return cert, nil
}

func missing(dir, name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("TLS credentials: %s has no %s (the directory holds ca-cert.pem, server-cert.pem and server-key.pem, client-cert.pem and client-key.pem, as for QEMU's tls-creds-x509)", dir, name)
	}
	return fmt.Errorf("TLS credentials: %w", err)
}
