package iso9660_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/cloudinit/iso9660"
)

// need fails the test when a checking tool is missing: the oracle is the
// point of the test, and scripts/setup-host installs it.
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: run scripts/setup-host", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestHostToolsReadIt: genisoimage's isoinfo and util-linux's blkid, which
// know ISO 9660 and Rock Ridge independently of us, read the label, the
// long names and every file's bytes back.
func TestHostToolsReadIt(t *testing.T) {
	need(t, "isoinfo", "blkid")
	big := bytes.Repeat([]byte("0123456789abcdef"), 300) // spans sectors
	files := []iso9660.File{
		{Name: "user-data", Data: []byte("#cloud-config\nhostname: vio-guest\n")},
		{Name: "meta-data", Data: []byte("instance-id: i-1\nlocal-hostname: vio-guest\n")},
		{Name: "network-config", Data: big},
		{Name: "vendor-data", Data: nil},
		{Name: "meta_data2", Data: []byte("x")}, // collides with meta-data in 8.3
	}
	img, err := iso9660.Write("cidata", files, time.Date(2026, 12, 6, 1, 2, 3, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "seed.iso")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(run(t, "blkid", "-o", "value", "-s", "LABEL", path)); got != "cidata" {
		t.Errorf("blkid LABEL %q, want cidata", got)
	}
	if got := strings.TrimSpace(run(t, "blkid", "-o", "value", "-s", "TYPE", path)); got != "iso9660" {
		t.Errorf("blkid TYPE %q, want iso9660", got)
	}
	d := run(t, "isoinfo", "-d", "-i", path)
	for _, want := range []string{"Volume id: cidata", "Rock Ridge signatures version 1 found", "Logical block size is: 2048"} {
		if !strings.Contains(d, want) {
			t.Errorf("isoinfo -d lacks %q:\n%s", want, d)
		}
	}
	l := run(t, "isoinfo", "-R", "-l", "-i", path)
	for _, f := range files {
		if !strings.Contains(l, " "+f.Name+" ") && !strings.HasSuffix(strings.TrimSpace(l), f.Name) && !strings.Contains(l, " "+f.Name+"\n") {
			t.Errorf("isoinfo -R -l does not list %s:\n%s", f.Name, l)
		}
		if got := run(t, "isoinfo", "-R", "-i", path, "-x", "/"+f.Name); got != string(f.Data) {
			t.Errorf("isoinfo -x /%s: %d bytes differing from the %d written", f.Name, len(got), len(f.Data))
		}
	}
	if !strings.Contains(l, "-r--r--r--") {
		t.Errorf("files are not shown read-only (r--r--r--):\n%s", l)
	}
}

func TestRefusals(t *testing.T) {
	for _, c := range []struct {
		label string
		files []iso9660.File
	}{
		{"", nil},
		{strings.Repeat("x", 33), nil},
		{"l", []iso9660.File{{Name: "a/b"}}},
		{"l", []iso9660.File{{Name: ""}}},
		{"l", []iso9660.File{{Name: "a"}, {Name: "a"}}},
		{"l", []iso9660.File{{Name: strings.Repeat("n", 65)}}},
		{"l", []iso9660.File{{Name: "big", Data: make([]byte, iso9660.MaxSize+1)}}},
	} {
		if _, err := iso9660.Write(c.label, c.files, time.Now()); err == nil {
			t.Errorf("label %q files %d: no error", c.label, len(c.files))
		}
	}
}
