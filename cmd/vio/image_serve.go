package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/nbd"
	"github.com/viovmm/vio/block/raw"
)

// `vio image serve --nbd ADDR FILE` exports an image over NBD, as qemu-nbd
// does, until interrupted. The protocol lives in package block/nbd; this
// file parses flags, wires the image to the server and reports.
//
// Exports are read-only unless --writable: a client that may write an
// image may also rewrite its first sector, so a writable export needs its
// format given (-f), never probed. With --tls-creds every client must
// start TLS (and, with --tls-verify-clients, present a certificate the CA
// signed); without it an export is open to anyone who can reach the
// address, which is said on stderr when it is not a loopback or unix
// socket address.

func init() { imageSubcommands = append(imageSubcommands, imageServeCommand) }

func imageServeCommand() *cobra.Command {
	var addr, name, format, cache, desc, tlsDir string
	var readOnly, writable, tlsVerify bool
	var maxConns int
	c := &cobra.Command{
		Use:   "serve --nbd ADDR [-f raw|qcow2] [--export-name NAME] [--writable] [-e N] [--tls-creds DIR [--tls-verify-clients]] FILE...",
		Short: "Export images over NBD (ADDR: host:port, or unix:PATH for a unix socket) until interrupted",
		Long: `Export one or more images over NBD until interrupted (SIGINT, SIGTERM),
then finish the requests in progress and flush the images. Each image is an
export named after its file (or --export-name, with a single FILE); a client
asking for the empty name gets the first.

Exports are read-only unless --writable is given (with -f: a writable
image's format is never guessed). At most --max-connections clients are
served at once.

With --tls-creds DIR every client must start TLS (NBD_OPT_STARTTLS) before
anything else; DIR holds ca-cert.pem, server-cert.pem and server-key.pem,
the layout of QEMU's tls-creds-x509 (qemu-nbd --tls-creds). With
--tls-verify-clients a client must also present a certificate signed by
ca-cert.pem. Without TLS, bind to 127.0.0.1 or a unix socket unless every
host that can reach ADDR may read the images.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if addr == "" {
				return errors.New("--nbd ADDR is required, e.g. --nbd 127.0.0.1:10809 or --nbd unix:/run/disk.sock")
			}
			if cmd.Flags().Changed("export-name") && len(args) > 1 {
				return errors.New("--export-name names a single FILE; with several, each export is named after its file")
			}
			if writable && readOnly {
				return errors.New("--writable and --read-only contradict each other: exports are read-only by default, so give --writable only to allow writes")
			}
			if writable && format == "" {
				return errors.New("--writable needs the image format (-f raw or -f qcow2): a client that can write an image could otherwise change what it is probed as next time")
			}
			if maxConns < 1 {
				return fmt.Errorf("--max-connections %d: give at least 1", maxConns)
			}
			if tlsVerify && tlsDir == "" {
				return errors.New("--tls-verify-clients needs --tls-creds DIR: client certificates are checked against DIR/ca-cert.pem")
			}
			var tlsConfig *tls.Config
			if tlsDir != "" {
				var err error
				if tlsConfig, err = nbd.ServerTLSConfig(tlsDir, tlsVerify); err != nil {
					return err
				}
			}
			readOnly = !writable
			topts, err := toolOptions(cmd, format)
			if err != nil {
				return err
			}
			mode, err := raw.ParseCacheMode(cache)
			if err != nil {
				return err
			}
			var exports []nbd.Export
			closeAll := func() error {
				var first error
				for _, e := range exports {
					if err := e.Backend.Close(); err != nil && first == nil {
						first = err
					}
				}
				return first
			}
			for _, file := range args {
				b, err := image.Open(file, image.OpenOptions{Format: topts.Format, ReadOnly: readOnly, Cache: mode, Lock: true, AllowBacking: topts.AllowBacking})
				if err != nil {
					closeAll()
					return err
				}
				n := filepath.Base(file)
				if cmd.Flags().Changed("export-name") {
					n = name
				}
				exports = append(exports, nbd.Export{Name: n, Description: desc, Backend: b, ReadOnly: readOnly})
			}
			s, err := nbd.NewServer(exports...)
			if err != nil {
				closeAll()
				return err
			}
			s.MaxConns = maxConns
			s.TLSConfig = tlsConfig
			l, err := nbd.Listen(addr)
			if err != nil {
				closeAll()
				return err
			}
			if l.Addr().Network() == "unix" {
				// Ours to remove when we stop, as qemu-nbd does.
				defer os.Remove(l.Addr().String())
			}
			if w := exposureWarning(l.Addr(), tlsConfig != nil, tlsVerify, writable); w != "" {
				fmt.Fprintln(cmd.ErrOrStderr(), "vio: warning: "+w)
			}
			s.Logf = func(format string, a ...any) { fmt.Fprintf(cmd.ErrOrStderr(), "vio: "+format+"\n", a...) }
			for i, e := range exports {
				fmt.Fprintf(cmd.ErrOrStderr(), "vio: serving %s (%d bytes%s) as %s\n", args[i], e.Backend.Size(),
					map[bool]string{true: ", read-only"}[readOnly], exportURI(l.Addr(), e.Name))
			}

			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			served := make(chan error, 1)
			go func() { served <- s.Serve(l) }()
			select {
			case <-ctx.Done():
			case err := <-served:
				closeAll()
				return fmt.Errorf("serving NBD on %s: %w", addr, err)
			}
			// Let requests in progress finish, then flush the images.
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			serr := s.Shutdown(sctx)
			<-served
			if err := closeAll(); err != nil {
				return fmt.Errorf("closing the images: %w", err)
			}
			if serr != nil {
				return fmt.Errorf("shutting down the NBD server: %w", serr)
			}
			return nil
		},
	}
	c.Flags().StringVar(&addr, "nbd", "", "where to listen: host:port, or unix:PATH")
	c.Flags().StringVarP(&format, "format", "f", "", "image format of every FILE: raw or qcow2 (probed if not given, read-only only)")
	c.Flags().StringVarP(&name, "export-name", "x", "", "export name, with a single FILE (default: the file's base name)")
	c.Flags().StringVar(&desc, "description", "", "export description shown by NBD_OPT_LIST")
	c.Flags().BoolVarP(&readOnly, "read-only", "r", false, "export read-only (the default; kept for compatibility)")
	c.Flags().BoolVarP(&writable, "writable", "w", false, "let clients write the images (needs -f)")
	c.Flags().IntVarP(&maxConns, "max-connections", "e", nbd.DefaultMaxConns, "clients served at once; more are refused")
	c.Flags().StringVar(&tlsDir, "tls-creds", "", "require TLS, with the X.509 credentials in this directory (ca-cert.pem, server-cert.pem, server-key.pem)")
	c.Flags().BoolVar(&tlsVerify, "tls-verify-clients", false, "require client certificates signed by the directory's ca-cert.pem (with --tls-creds)")
	c.Flags().StringVar(&cache, "cache", "writeback", "host cache mode: writeback, writethrough, none, directsync or unsafe")
	return c
}

// exposureWarning says who can reach the exports when that is more than
// this host's users: a TCP address other than loopback without TLS, or
// with TLS but no client certificates ("" when there is nothing to say).
func exposureWarning(a net.Addr, tls, verify, writable bool) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta.IP.IsLoopback() {
		return ""
	}
	access := "read"
	if writable {
		access = "read and write"
	}
	switch {
	case !tls:
		return fmt.Sprintf("serving on %s without TLS: any host that can reach it can %s the images; bind to 127.0.0.1 or a unix socket, or give --tls-creds, unless that is intended", a, access)
	case !verify:
		return fmt.Sprintf("serving on %s with TLS but without client certificates: any host that can reach it can %s the images (encrypted); give --tls-verify-clients to admit only clients with a certificate from the CA", a, access)
	}
	return ""
}

// exportURI is the URI a client (qemu-img, vio, nbdinfo) uses for the export.
func exportURI(a net.Addr, name string) string {
	if a.Network() == "unix" {
		return "nbd+unix:///" + url.PathEscape(name) + "?socket=" + a.String()
	}
	host := a.String()
	if h, p, err := net.SplitHostPort(host); err == nil && (h == "" || h == "::" || h == "0.0.0.0") {
		host = net.JoinHostPort("localhost", p)
	}
	return "nbd://" + host + "/" + strings.TrimPrefix(url.PathEscape(name), "/")
}
