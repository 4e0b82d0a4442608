package labtest

import (
	"fmt"
	"os"
	"os/exec"
)

// Build compiles the Go package pkg (a path relative to the test's
// directory, like "../cmd/vio") into out on the host, static and without
// cgo: the lab's emulated CPU would take minutes to compile it, and vio
// built without cgo is what `make build` ships (only then can its sandbox
// put every thread under Landlock, docs/security.md). A guest runs such a
// program from its tools disk with no libraries.
func Build(out, pkg string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building %s: %w", pkg, err)
	}
	return nil
}
