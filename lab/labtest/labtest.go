// Package labtest lets a package's tests run where a real KVM is. Its Main
// is the package's TestMain: on a host with hardware virtualization, or
// already inside the lab, the tests just run; otherwise it boots the lab once
// and runs the same test binary there, so all tests of the package share one
// L1 boot (lab boots are the expensive part; batch scenarios per package).
//
// The guest half of a scenario is an ordinary program (a busybox script or
// a Go binary) in an initramfs the test builds; the host half checks what
// the guest reports.
package labtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab"
	"github.com/viovmm/vio/lab/assets"
	"github.com/viovmm/vio/lab/initramfs"
)

// Inside reports whether this process runs inside the lab VM.
func Inside() bool { return os.Getenv("VIO_LAB_INSIDE") == "1" }

// Main runs m where a real KVM is and exits with Run's status.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run runs m where a real KVM is and returns the exit status. Set
// VIO_LAB=off to skip the package's tests on a host without hardware
// virtualization.
func Run(m *testing.M) int {
	if Inside() || lab.HardwareKVM() {
		return m.Run()
	}
	if os.Getenv("VIO_LAB") == "off" {
		fmt.Println("labtest: VIO_LAB=off and this host has no hardware virtualization: lab tests skipped")
		fmt.Println("PASS")
		return 0
	}
	return relaunch()
}

func relaunch() int {
	ctx := context.Background()
	if _, err := assets.Ensure(ctx, assets.DefaultDir(), nil); err != nil {
		fmt.Fprintln(os.Stderr, "labtest:", err)
		return 1
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "labtest:", err)
		return 1
	}
	cfg := lab.Config{Timeout: timeout(os.Args[1:]), Env: passEnv()}
	if os.Getenv("VIO_LAB_VERBOSE") != "" {
		cfg.Verbose = os.Stderr
	}
	start := time.Now()
	fmt.Printf("labtest: no hardware KVM here; running %s in the lab\n", filepath.Base(self))
	err = lab.Exec(ctx, cfg, append([]string{self}, os.Args[1:]...), os.Stdout, os.Stderr)
	fmt.Printf("labtest: lab run took %v\n", time.Since(start).Round(100*time.Millisecond))
	var exit *lab.ExitError
	switch {
	case errors.As(err, &exit):
		return exit.Code
	case err != nil:
		fmt.Fprintln(os.Stderr, "labtest:", err)
		return 1
	}
	return 0
}

// timeout leaves the lab a little less than go test's own deadline, so that
// the lab's clear timeout message comes out before go test kills us.
func timeout(args []string) time.Duration {
	d := 10 * time.Minute
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "-test.timeout="); ok {
			if t, err := time.ParseDuration(v); err == nil && t > 0 {
				d = t
			}
		}
	}
	if d > 2*time.Minute {
		d -= 30 * time.Second
	}
	return d
}

// passEnv forwards the variables tests may be steered with.
func passEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "VIO_") || strings.HasPrefix(kv, "GO") {
			env = append(env, kv)
		}
	}
	return env
}

// Assets returns the lab's guest kernel and friends, failing the test if
// they were never fetched (Main fetches them before booting the lab).
func Assets(t testing.TB) *assets.Assets {
	t.Helper()
	a, err := assets.Load(assets.DefaultDir())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Initramfs builds a guest initramfs in a temporary directory: busybox, the
// named kernel modules, and script as /init's program (run by busybox sh
// after the modules are loaded). It returns the file's path.
func Initramfs(t testing.TB, script string, modules ...string) string {
	t.Helper()
	a := Assets(t)
	b := initramfs.New()
	b.Busybox(a.Busybox)
	if len(modules) > 0 {
		mods, err := initramfs.OpenModules(a.ModulesDir)
		if err != nil {
			t.Fatal(err)
		}
		b.Modules(mods, modules...)
	}
	b.File("/guest.sh", []byte(script), 0o755)
	b.Init("/bin/sh", "/guest.sh")
	out := filepath.Join(t.TempDir(), "initramfs.cpio.gz")
	if err := b.WriteFile(out); err != nil {
		t.Fatal(err)
	}
	return out
}
