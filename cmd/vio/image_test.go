package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runImage runs `vio image ARGS...` in-process and returns its output.
func runImage(t *testing.T, args ...string) (string, error) {
	t.Helper()
	c := imageCommand()
	var out bytes.Buffer
	c.SetOut(&out)
	c.SetErr(&out)
	c.SetArgs(args)
	c.SilenceUsage = true
	c.SilenceErrors = true
	err := c.Execute()
	return out.String(), err
}

func TestImageCLI(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	top := filepath.Join(dir, "top.qcow2")
	steps := [][]string{
		{"create", "-f", "raw", base, "16M"},
		{"create", "-b", "base.raw", "-F", "raw", top},
		{"snapshot", "-c", "first", top},
		{"resize", top, "+16M"},
		{"convert", "-O", "qcow2", top, filepath.Join(dir, "flat.qcow2")},
		{"convert", "-O", "raw", top, filepath.Join(dir, "flat.raw")},
		{"check", top},
	}
	for _, s := range steps {
		if out, err := runImage(t, s...); err != nil {
			t.Fatalf("vio image %s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	out, err := runImage(t, "info", "--output=json", top)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
		Backing     string `json:"backing-filename"`
		Snapshots   []struct {
			Name string `json:"name"`
		} `json:"snapshots"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("info JSON: %v\n%s", err, out)
	}
	if info.Format != "qcow2" || info.VirtualSize != 32<<20 || info.Backing != "base.raw" ||
		len(info.Snapshots) != 1 || info.Snapshots[0].Name != "first" {
		t.Errorf("info = %+v", info)
	}
	if out, _ := runImage(t, "snapshot", "-l", top); !strings.Contains(out, "first") {
		t.Errorf("snapshot -l:\n%s", out)
	}
	if out, _ := runImage(t, "info", top); !strings.Contains(out, "virtual size: 32 MiB (33554432 bytes)") {
		t.Errorf("info:\n%s", out)
	}
	if _, err := exec.LookPath("qemu-img"); err == nil {
		for _, f := range []string{"flat.qcow2", "flat.raw"} {
			if out, err := exec.Command("qemu-img", "compare", top, filepath.Join(dir, f)).CombinedOutput(); err != nil {
				t.Errorf("qemu-img compare %s: %v\n%s", f, err, out)
			}
		}
		if out, err := exec.Command("qemu-img", "check", top).CombinedOutput(); err != nil {
			t.Errorf("qemu-img check: %v\n%s", err, out)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"create", filepath.Join(dir, "x.qcow2"), "12X"}, `invalid size "12X"`},
		{[]string{"create", "-f", "vmdk", filepath.Join(dir, "x.img"), "1G"}, `unknown image format "vmdk"`},
		{[]string{"create", filepath.Join(dir, "x.qcow2")}, "a size is needed"},
		{[]string{"info", filepath.Join(dir, "missing.qcow2")}, "does not exist"},
		{[]string{"snapshot", "-c", "a", "-d", "b", top}, "exactly one of"},
		{[]string{"snapshot", "-a", "nope", top}, "no such snapshot"},
		{[]string{"info", "--output=xml", top}, "unknown output format"},
	} {
		_, err := runImage(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("vio image %s: %v, want an error containing %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}
