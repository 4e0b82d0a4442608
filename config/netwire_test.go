package config

import (
	"strings"
	"testing"
)

func TestParseNetSocketAndInterposers(t *testing.T) {
	n, err := ParseNet("socket=/run/sw.sock,firewall=/etc/fw.rules,pcap=/tmp/n.pcap,ids=/run/ids.sock,ids_mode=ips")
	if err != nil {
		t.Fatal(err)
	}
	if n.Socket != "/run/sw.sock" || n.Firewall != "/etc/fw.rules" || n.Pcap != "/tmp/n.pcap" || n.IDS != "/run/ids.sock" || n.IDSMode != "ips" {
		t.Fatalf("%+v", n)
	}
	for spec, want := range map[string]string{
		"socket=/a,tap=t":                 "more than one back-end",
		"socket=/a,user=on":               "more than one back-end",
		"pcap=/x":                         "no back-end",
		"socket=/a,ids_mode=ips":          "without ids=SOCKET",
		"socket=/a,ids=/i,ids_mode=block": "want ids",
	} {
		if _, err := ParseNet(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseNet(%q): %v, want %q", spec, err, want)
		}
	}
	n, err = ParseNet("socket=/a+/b,bond=balance")
	if err != nil || n.Socket != "" || n.Bond == nil || n.Bond.Mode != "balance" || len(n.Bond.Sockets) != 2 || n.Bond.Sockets[1] != "/b" {
		t.Fatalf("bond: %+v %v", n, err)
	}
	for spec, want := range map[string]string{
		"socket=/a,bond=active-backup":    "two or more sockets",
		"socket=/a+/b,bond=round-robin":   "want active-backup or balance",
		"bond=balance":                    "two or more sockets",
		"socket=/a+/b,bond=balance,tap=t": "more than one back-end",
	} {
		if _, err := ParseNet(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseNet(%q): %v, want %q", spec, err, want)
		}
	}
	if err := (Net{Socket: "/a", Tap: "t"}).validateBackend(0); err == nil || !strings.Contains(err.Error(), "net 0 has more than one") {
		t.Errorf("config with two back-ends: %v", err)
	}
}
