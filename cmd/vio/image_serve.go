package main

import (
	"context"
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

func init() { imageSubcommands = append(imageSubcommands, imageServeCommand) }

func imageServeCommand() *cobra.Command {
	var addr, name, format, cache, desc string
	var readOnly bool
	c := &cobra.Command{
		Use:   "serve --nbd ADDR [-f raw|qcow2] [--export-name NAME] [--read-only] FILE",
		Short: "Export an image over NBD (ADDR: host:port, or unix:PATH for a unix socket) until interrupted",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if addr == "" {
				return errors.New("--nbd ADDR is required, e.g. --nbd 127.0.0.1:10809 or --nbd unix:/run/disk.sock")
			}
			if format != "" {
				if err := image.CheckFormat(format); err != nil {
					return err
				}
			}
			mode, err := raw.ParseCacheMode(cache)
			if err != nil {
				return err
			}
			file := args[0]
			if !cmd.Flags().Changed("export-name") {
				name = filepath.Base(file)
			}
			b, err := image.Open(file, image.OpenOptions{Format: format, ReadOnly: readOnly, Cache: mode})
			if err != nil {
				return err
			}
			s, err := nbd.NewServer(nbd.Export{Name: name, Description: desc, Backend: b, ReadOnly: readOnly})
			if err != nil {
				b.Close()
				return err
			}
			l, err := nbd.Listen(addr)
			if err != nil {
				b.Close()
				return err
			}
			if l.Addr().Network() == "unix" {
				// Ours to remove when we stop, as qemu-nbd does.
				defer os.Remove(l.Addr().String())
			}
			s.Logf = func(format string, a ...any) { fmt.Fprintf(cmd.ErrOrStderr(), "vio: "+format+"\n", a...) }
			fmt.Fprintf(cmd.ErrOrStderr(), "vio: serving %s (%d bytes%s) as %s\n", file, b.Size(),
				map[bool]string{true: ", read-only"}[readOnly], exportURI(l.Addr(), name))

			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			served := make(chan error, 1)
			go func() { served <- s.Serve(l) }()
			select {
			case <-ctx.Done():
			case err := <-served:
				b.Close()
				return fmt.Errorf("serving NBD on %s: %w", addr, err)
			}
			// Let requests in progress finish, then flush the image.
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			serr := s.Shutdown(sctx)
			<-served
			if err := b.Close(); err != nil {
				return fmt.Errorf("closing %s: %w", file, err)
			}
			if serr != nil {
				return fmt.Errorf("shutting down the NBD server: %w", serr)
			}
			return nil
		},
	}
	c.Flags().StringVar(&addr, "nbd", "", "where to listen: host:port, or unix:PATH")
	c.Flags().StringVarP(&format, "format", "f", "", "image format: raw or qcow2 (probed if not given)")
	c.Flags().StringVarP(&name, "export-name", "x", "", "export name (default: the file's base name; clients asking for \"\" get it too)")
	c.Flags().StringVar(&desc, "description", "", "export description shown by NBD_OPT_LIST")
	c.Flags().BoolVarP(&readOnly, "read-only", "r", false, "export read-only")
	c.Flags().StringVar(&cache, "cache", "writeback", "host cache mode: writeback, writethrough, none, directsync or unsafe")
	return c
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
