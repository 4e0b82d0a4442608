package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDiskBootValidation(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(img, make([]byte, 4096), 0o644)
	c := Default()
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "no kernel given") {
		t.Errorf("no kernel, no disk: %v", err)
	}
	c.Disks = []Disk{{Path: img, Iface: DiskCDROM}, {Path: img}}
	if err := c.Validate(); err != nil {
		t.Errorf("no kernel, a disk: %v", err)
	}
	if c.BootDisk() != 1 {
		t.Errorf("boot disk %d, want 1 (the first that is not a CD-ROM)", c.BootDisk())
	}
	c.Payload.Initramfs = img
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--initrd without --kernel") {
		t.Errorf("initrd without kernel: %v", err)
	}
	// The same from a JSON config: no payload.kernel.
	j, err := Decode([]byte(`{"disks":[{"path":"` + img + `"}],"cloud_init":{"user_data":"` + img + `"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Validate(); err != nil || j.CloudInit == nil || j.CloudInit.UserData != img {
		t.Errorf("JSON config: %v, %+v", err, j.CloudInit)
	}
}

func TestParseCloudInit(t *testing.T) {
	f := filepath.Join(t.TempDir(), "ud")
	os.WriteFile(f, []byte("#cloud-config\n"), 0o644)
	c, err := ParseCloudInit("user-data=" + f + ",meta_data=" + f)
	if err != nil || c.UserData != f || c.MetaData != f {
		t.Fatalf("%+v, %v", c, err)
	}
	for spec, want := range map[string]string{
		"user-data=/nonexistent": "does not exist",
		"userdata=" + f:          "unknown key",
		"":                       "",
	} {
		if _, err := ParseCloudInit(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", spec, err, want)
		}
	}
}
