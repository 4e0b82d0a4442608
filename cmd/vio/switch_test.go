package main

import (
	"strings"
	"testing"
)

func TestParseSwitchPort(t *testing.T) {
	sp, err := parseSwitchPort("name=a,path=/run/a.sock,vlan=20,mac=52:54:00:00:00:01,ip=10.0.0.1,rate=1M", true)
	if err != nil {
		t.Fatal(err)
	}
	if sp.path != "/run/a.sock" || sp.pc.Name != "a" || sp.pc.VLAN != 20 || sp.pc.MAC.String() != "52:54:00:00:00:01" ||
		sp.pc.IPv4.String() != "10.0.0.1" || sp.pc.Rate != 1<<20 || !sp.pc.AntiSpoof {
		t.Fatalf("%+v", sp)
	}
	for spec, want := range map[string]string{
		"name=a":                            "path=PATH",
		"path=/a,vlan=0":                    "1 to 4094",
		"path=/a,vlan=4095":                 "1 to 4094",
		"path=/a,ip=fd00::1":                "IPv4",
		"path=/a,mac=01:00:00:00:00:01":     "multicast",
		"path=/a,rate=fast":                 "rate",
		"path=/a,colour=red":                "unknown key",
		"path=/a,anti_spoof=off,ip=1.2.3.4": "anti_spoof=on",
	} {
		if _, err := parseSwitchPort(spec, true); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", spec, err, want)
		}
	}
}
