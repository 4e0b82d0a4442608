// Command vio-demo boots the demo VM with vio and shows its I/O working,
// checking every step from both sides (see package internal/demo). It runs
// vio directly on a host with hardware virtualization and inside the lab
// otherwise. `make demo` builds it and runs it from the repository root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/viovmm/vio/internal/demo"
	"github.com/viovmm/vio/lab"
	"github.com/viovmm/vio/lab/assets"
)

func main() {
	dir := flag.String("dir", ".lab/demo", "directory for the demo's guest and disk image")
	vio := flag.String("vio", "bin/vio", "the vio binary to demonstrate")
	prepared := flag.Bool("prepared", false, "run an already prepared demo in -dir here (what the lab run does)")
	flag.Parse()
	if err := mainErr(*dir, *vio, *prepared); err != nil {
		fmt.Fprintln(os.Stderr, "vio-demo: FAILED:", err)
		os.Exit(1)
	}
}

func mainErr(dir, vio string, prepared bool) error {
	ctx := context.Background()
	abs, err := filepath.Abs(vio)
	if err != nil {
		return err
	}
	if _, err := os.Stat(abs); err != nil {
		return fmt.Errorf("no vio binary at %s: build it first (go build -o bin/ ./cmd/...)", vio)
	}
	if prepared {
		p, err := demo.Load(dir)
		if err != nil {
			return err
		}
		return demo.Run(ctx, p, abs, os.Stdout)
	}
	a, err := assets.Ensure(ctx, assets.DefaultDir(), nil)
	if err != nil {
		return err
	}
	p, err := demo.Prepare(a, dir, demo.Modules)
	if err != nil {
		return err
	}
	if lab.HardwareKVM() {
		fmt.Println("vio-demo: hardware KVM here; running vio directly (needs root for the TAP device)")
		return demo.Run(ctx, p, abs, os.Stdout)
	}
	fmt.Println("vio-demo: this host's KVM cannot boot Linux at speed; running vio inside the lab (a minute or two)")
	self, err := os.Executable()
	if err != nil {
		return err
	}
	err = lab.Exec(ctx, lab.Config{Timeout: 12 * time.Minute}, []string{self, "-prepared", "-dir", dir, "-vio", abs}, os.Stdout, os.Stderr)
	var exit *lab.ExitError
	if errors.As(err, &exit) {
		return fmt.Errorf("the demo failed inside the lab (its message is above)")
	}
	return err
}
