// Package nbdtest makes what tests of NBD over TLS need: X.509 credential
// directories in the layout of QEMU's tls-creds-x509, made by openssl.
package nbdtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Creds are TLS credential directories made by openssl for one test,
// in the layout of QEMU's tls-creds-x509 (see tls.go).
type Creds struct {
	Server string // ca-cert.pem, server-cert.pem, server-key.pem
	Client string // ca-cert.pem, client-cert.pem, client-key.pem
	Anon   string // ca-cert.pem only: a client without a certificate
	Rogue  string // ca-cert.pem, and a client certificate another CA signed
}

// MakeCreds generates a CA, a server certificate for localhost and
// 127.0.0.1, a client certificate from the same CA, and one from a rogue
// CA. openssl, not Go, makes them, so that the loader reads what users'
// tools write.
func MakeCreds(t testing.TB) Creds {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is not installed: run scripts/setup-host (apt-get install openssl)")
	}
	work := t.TempDir()
	ossl := func(args ...string) {
		t.Helper()
		cmd := exec.Command("openssl", args...)
		cmd.Dir = work
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(work, name), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ec := []string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"}
	ca := func(name string) {
		ossl(append(append([]string{"req", "-x509"}, ec...), "-keyout", name+"-key.pem", "-out", name+"-cert.pem",
			"-days", "2", "-subj", "/CN="+name,
			"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")...)
	}
	leaf := func(name, caName, ext, serial string) {
		write(name+".ext", ext)
		ossl(append(append([]string{"req"}, ec...), "-keyout", name+"-key.pem", "-out", name+".csr", "-subj", "/CN="+name)...)
		ossl("x509", "-req", "-in", name+".csr", "-CA", caName+"-cert.pem", "-CAkey", caName+"-key.pem",
			"-set_serial", serial, "-days", "2", "-out", name+"-cert.pem", "-extfile", name+".ext")
	}
	ca("ca")
	ca("rogue-ca")
	const leafExt = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
	leaf("server", "ca", leafExt+"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n", "2")
	leaf("client", "ca", leafExt+"extendedKeyUsage=clientAuth\n", "3")
	leaf("rogue", "rogue-ca", leafExt+"extendedKeyUsage=clientAuth\n", "4")

	dir := func(name string, files map[string]string) string {
		d := filepath.Join(t.TempDir(), name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		for to, from := range files {
			b, err := os.ReadFile(filepath.Join(work, from))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, to), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	return Creds{
		Server: dir("server", map[string]string{"ca-cert.pem": "ca-cert.pem", "server-cert.pem": "server-cert.pem", "server-key.pem": "server-key.pem"}),
		Client: dir("client", map[string]string{"ca-cert.pem": "ca-cert.pem", "client-cert.pem": "client-cert.pem", "client-key.pem": "client-key.pem"}),
		Anon:   dir("anon", map[string]string{"ca-cert.pem": "ca-cert.pem"}),
		Rogue:  dir("rogue", map[string]string{"ca-cert.pem": "ca-cert.pem", "client-cert.pem": "rogue-cert.pem", "client-key.pem": "rogue-key.pem"}),
	}
}
