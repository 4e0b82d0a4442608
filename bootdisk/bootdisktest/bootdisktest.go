// Package bootdisktest builds real disk images with the host's own tools
// (sfdisk from util-linux, mkfs.ext4 from e2fsprogs), so that the readers
// in bootdisk are tested against what those tools write, not against what
// vio's authors believe they write.
package bootdisktest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Part is one partition of an image.
type Part struct {
	// Type is an sfdisk type: a GPT type GUID or an MBR type byte ("83").
	Type    string
	SizeMiB int
	// Root, when set, is a directory whose tree becomes the partition's
	// ext4 file system (mkfs.ext4 -d); unset leaves the partition empty.
	Root string
	// Mkfs are extra mkfs.ext4 arguments (-U UUID, -b 1024, -O ^64bit ...).
	Mkfs []string
	// Logical puts an MBR partition inside an extended partition.
	Logical bool
}

// Need skips the test when a host tool is missing.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (scripts/setup-host installs it)", tool)
		}
	}
}

// Run runs a host command, failing the test with its output on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Mkfs makes an ext4 file system of sizeMiB from root (mkfs.ext4 -d) in
// the file path, at byte offset off.
func Mkfs(t testing.TB, path string, off int64, sizeMiB int, root string, extra ...string) {
	t.Helper()
	Need(t, "mkfs.ext4")
	args := []string{"-q", "-F", "-E", fmt.Sprintf("offset=%d", off)}
	if root != "" {
		args = append(args, "-d", root)
	}
	args = append(args, extra...)
	args = append(args, path, fmt.Sprintf("%dM", sizeMiB))
	Run(t, "mkfs.ext4", args...)
}

// Build writes a disk image at path with a label ("gpt" or "dos") and the
// partitions, each starting on a MiB boundary after a first MiB left for
// the table, and returns each partition's start in bytes.
func Build(t testing.TB, path, label string, parts []Part) []int64 {
	t.Helper()
	Need(t, "sfdisk", "mkfs.ext4")
	total := 1 // MiB before the first partition
	for _, p := range parts {
		total += p.SizeMiB
		if p.Logical {
			total++ // the EBR's gap
		}
	}
	total++ // GPT's backup table
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(total) << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var script strings.Builder
	fmt.Fprintf(&script, "label: %s\n", label)
	starts := make([]int64, len(parts))
	next := int64(1 << 20)
	extDone := false
	for i, p := range parts {
		if p.Logical && !extDone {
			// One extended partition holding every logical one after it.
			size := int64(0)
			for _, q := range parts[i:] {
				size += int64(q.SizeMiB+1) << 20
			}
			fmt.Fprintf(&script, "start=%d, size=%d, type=5\n", next/512, size/512)
			extDone = true
		}
		if p.Logical {
			next += 1 << 20
		}
		starts[i] = next
		fmt.Fprintf(&script, "start=%d, size=%d, type=%s\n", next/512, int64(p.SizeMiB)<<20/512, p.Type)
		next += int64(p.SizeMiB) << 20
	}
	cmd := exec.Command("sfdisk", "-q", "--no-reread", "--no-tell-kernel", path)
	cmd.Stdin = strings.NewReader(script.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s\nscript:\n%s", err, out, script.String())
	}
	for i, p := range parts {
		if p.Root != "" {
			Mkfs(t, path, starts[i], p.SizeMiB, p.Root, p.Mkfs...)
		}
	}
	return starts
}

// WriteTree creates files under root: a name ending in "/" is a
// directory, "->target" as content makes a symbolic link.
func WriteTree(t testing.TB, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := root + "/" + name
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(p[:strings.LastIndexByte(p, '/')], 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(content, "->"); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
