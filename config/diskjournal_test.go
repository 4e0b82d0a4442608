package config

import (
	"strings"
	"testing"
)

func TestDiskJournalSpec(t *testing.T) {
	d, err := ParseDisk("path=a.img,format=qcow2,journal=a.journal")
	if err != nil {
		t.Fatal(err)
	}
	if d.Path != "" || d.Graph == nil || d.Graph.Kind != "journal" || len(d.Graph.Children) != 1 ||
		d.Graph.Children[0].Kind != "qcow2" || d.Graph.Children[0].Path != "a.img" ||
		!strings.Contains(string(d.Graph.Options), `"log":"a.journal"`) {
		t.Fatalf("journal= made %+v (graph %+v)", d, d.Graph)
	}
	vm := VM{Disks: []Disk{d}}
	if err := vm.validateDiskGraphs(); err != nil {
		t.Fatalf("the graph journal= makes does not validate: %v", err)
	}
	u, err := ParseDisk("path=b.img,format=raw,undo=on")
	if err != nil || u.Graph == nil || !strings.Contains(string(u.Graph.Options), `"undo":true`) {
		t.Fatalf("undo=on: %v, %+v", err, u.Graph)
	}
	for spec, want := range map[string]string{
		"path=a.img,journal=a.journal":                     "need format=raw or format=qcow2",
		"path=a.img,format=raw,readonly=on,journal=l":      "drop readonly",
		"path=a.img,format=raw,undo=maybe":                 "want on or off",
		"iface=cdrom,path=a.iso,format=raw,journal=a.jrnl": "not cdrom",
	} {
		if _, err := ParseDisk(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error saying %q", spec, err, want)
		}
	}
}
