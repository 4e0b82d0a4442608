package cloudinit_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/cloudinit"
	"github.com/viovmm/vio/config"
)

func isoinfo(t *testing.T, img, file string) (string, bool) {
	t.Helper()
	out, err := exec.Command("isoinfo", "-R", "-i", img, "-x", file).Output()
	if err != nil {
		t.Fatal(err)
	}
	l, _ := exec.Command("isoinfo", "-R", "-l", "-i", img).Output()
	return string(out), strings.Contains(string(l), " "+strings.TrimPrefix(file, "/")+" ")
}

func TestSeed(t *testing.T) {
	if _, err := exec.LookPath("isoinfo"); err != nil {
		t.Fatal("isoinfo is not installed: run scripts/setup-host (it installs genisoimage)")
	}
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(s), 0o644)
		return p
	}
	ud := write("ud", "#cloud-config\nhostname: h1\n")
	md := write("md", "instance-id: mine\n")
	nc := write("nc", "version: 2\n")
	for _, c := range []struct {
		name  string
		ci    config.CloudInit
		files map[string]string // "" = absent
	}{
		{"all", config.CloudInit{UserData: ud, MetaData: md, NetworkConfig: nc},
			map[string]string{"user-data": "#cloud-config\nhostname: h1\n", "meta-data": "instance-id: mine\n", "network-config": "version: 2\n"}},
		{"default-meta-data", config.CloudInit{UserData: ud},
			map[string]string{"user-data": "#cloud-config\nhostname: h1\n", "meta-data": "instance-id: 0123-uuid\nlocal-hostname: vio-0123\n", "network-config": ""}},
		{"meta-data-only", config.CloudInit{MetaData: md},
			map[string]string{"user-data": "\x00", "meta-data": "instance-id: mine\n"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			img, err := cloudinit.Seed(&c.ci, "0123-uuid", "vio-0123", time.Now())
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(t.TempDir(), "seed.iso")
			os.WriteFile(p, img, 0o644)
			if l, _ := exec.Command("blkid", "-o", "value", "-s", "LABEL", p).Output(); strings.TrimSpace(string(l)) != "cidata" {
				t.Errorf("label %q", l)
			}
			for name, want := range c.files {
				got, listed := isoinfo(t, p, "/"+name)
				switch want {
				case "":
					if listed {
						t.Errorf("%s present", name)
					}
				case "\x00":
					if !listed || got != "" {
						t.Errorf("%s: listed %v, %q; want an empty file", name, listed, got)
					}
				default:
					if got != want {
						t.Errorf("%s = %q, want %q", name, got, want)
					}
				}
			}
		})
	}
	if _, err := cloudinit.Seed(&config.CloudInit{UserData: filepath.Join(dir, "missing")}, "u", "h", time.Now()); err == nil || !strings.Contains(err.Error(), "user-data") {
		t.Errorf("missing file: %v", err)
	}
}
