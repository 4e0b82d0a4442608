package config

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseDiskEncrypt(t *testing.T) {
	d, err := ParseDisk("path=a.qcow2,format=qcow2,encrypt=on,key_file=/k,encrypt_discard=on,readonly=on")
	if err != nil {
		t.Fatal(err)
	}
	if d.Path != "" || d.Graph == nil || d.Graph.Kind != "crypt" || len(d.Graph.Children) != 1 {
		t.Fatalf("want a crypt graph over one leaf, got path %q graph %+v", d.Path, d.Graph)
	}
	if l := d.Graph.Children[0]; l.Kind != "qcow2" || l.Path != "a.qcow2" {
		t.Errorf("leaf %+v", l)
	}
	var o map[string]any
	json.Unmarshal(d.Graph.Options, &o)
	if o["key_file"] != "/k" || o["discard"] != true {
		t.Errorf("options %s", d.Graph.Options)
	}
	if !d.Readonly {
		t.Error("readonly=on lost")
	}
	// The disk passes the VM config's validation.
	c := VM{Disks: []Disk{d}}
	if err := c.validateDiskGraphs(); err != nil {
		t.Fatal(err)
	}
	d, err = ParseDisk("path=a.img,encrypt=on,key_fd=3")
	if err != nil || d.Graph.Children[0].Kind != "raw" {
		t.Fatalf("%+v, %v", d, err)
	}
	for spec, want := range map[string]string{
		"path=a,encrypt=on":                         "no key",
		"path=a,encrypt=on,key_file=k,key_env=K":    "exactly one",
		"path=a,key_file=k":                         "need encrypt=on",
		"path=a,encrypt=maybe,key_file=k":           "want on or off",
		"path=a,encrypt=on,key_fd=x":                "file descriptor",
		"path=a,encrypt=on,passphrase=x":            `unknown key "passphrase"`,
		"iface=cdrom,path=a,encrypt=on,key_env=K":   "CD-ROM",
		"path=a,encrypt=on,key_env=K,backing=allow": "format=qcow2",
	} {
		if _, err := ParseDisk(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", spec, err, want)
		}
	}
}
