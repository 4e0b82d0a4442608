package main

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/block/nbd"
	"github.com/viovmm/vio/block/nbd/nbdtest"
)

// TestImageServeTLS: `vio image serve --tls-creds` serves to a client with
// the CA's certificate and refuses a plain one; --tls-verify-clients needs
// --tls-creds; a directory without the server's key is named; binding all
// interfaces with TLS but no client certificates is warned about.
func TestImageServeTLS(t *testing.T) {
	creds := nbdtest.MakeCreds(t)
	img := filepath.Join(t.TempDir(), "d.raw")
	if out, err := runImage(t, "create", "-f", "raw", img, "1M"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-verify-clients", "--nbd", "127.0.0.1:0", img}, "--tls-verify-clients needs --tls-creds"},
		{[]string{"--tls-creds", creds.Client, "--nbd", "127.0.0.1:0", img}, "has no server-cert.pem"},
	} {
		out, err, stop := serveBG(t, c.args...)
		if err == nil {
			stop()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("serve %s: %v, want %q\n%s", strings.Join(c.args, " "), err, c.want, out)
		}
	}

	out, err, stop := serveBG(t, "--tls-creds", creds.Server, "--tls-verify-clients", "--nbd", "127.0.0.1:0", img)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	defer stop()
	uri := regexp.MustCompile(`nbd://\S+`).FindString(out)
	if uri == "" || strings.Contains(out, "warning") {
		t.Fatalf("banner without a URI, or a warning on loopback:\n%s", out)
	}
	uri = strings.Replace(uri, "localhost", "127.0.0.1", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, err := nbd.ClientTLSConfig(creds.Client, "")
	if err != nil {
		t.Fatal(err)
	}
	cl, err := nbd.Dial(ctx, uri, nbd.Options{TLS: cfg, ReconnectAttempts: -1})
	if err != nil {
		t.Fatalf("client with a certificate: %v", err)
	}
	if cl.Size() != 1<<20 || !cl.ReadOnly() {
		t.Errorf("export over TLS: size %d, read-only %v", cl.Size(), cl.ReadOnly())
	}
	cl.Close()
	if cl, err := nbd.Dial(ctx, uri, nbd.Options{ReconnectAttempts: -1}); err == nil {
		cl.Close()
		t.Error("a plain client was served by a TLS server")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	for args, want := range map[string]string{
		"--tls-creds " + creds.Server:                           "with TLS but without client certificates",
		"--tls-creds " + creds.Server + " --tls-verify-clients": "",
		"": "without TLS",
	} {
		out, err, stop := serveBG(t, append(strings.Fields(args), "--nbd", "0.0.0.0:0", img)...)
		if err != nil {
			t.Fatalf("serve %s on all interfaces: %v\n%s", args, err, out)
		}
		stop()
		if got := strings.Contains(out, "warning"); got != (want != "") || !strings.Contains(out, want) {
			t.Errorf("serve %s on all interfaces, want a warning %q:\n%s", args, want, out)
		}
	}
}
