package main

import (
	"strconv"
	"strings"
	"testing"
)

// FuzzSwitchPort feeds arbitrary --port specs to vio switch's parser. It
// must not panic; an error is one line without a closing full stop that
// names the flag; and a port it accepts has a socket path, a VLAN of 1 to
// 4094 (or none) written exactly as the spec's last vlan= says, and a MAC
// or IP only with anti-spoofing, whose MAC is unicast.
func FuzzSwitchPort(f *testing.F) {
	for _, s := range []string{
		"name=a,path=/run/a.sock,vlan=20,mac=52:54:00:00:00:01,ip=10.0.0.1,rate=1M",
		"path=/a,vlan=0x10", "path=/a,vlan=12abc", "path=/a,vlan= 7", "path=/a,vlan=+9",
		"path=/a,anti_spoof=off,ip=1.2.3.4", "name=a", "path=/a,,vlan=1,vlan=2", "=,x",
	} {
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, spec string, antiSpoof bool) {
		sp, err := parseSwitchPort(spec, antiSpoof)
		if err != nil {
			msg := err.Error()
			if !strings.HasPrefix(msg, "--port ") || strings.ContainsAny(msg, "\n\r") || strings.HasSuffix(msg, ".") {
				t.Fatalf("%q: error %q is not one sentence naming --port", spec, msg)
			}
			return
		}
		if sp.path == "" {
			t.Fatalf("%q accepted without a path", spec)
		}
		vlan := ""
		for _, part := range strings.Split(spec, ",") {
			if v, ok := strings.CutPrefix(part, "vlan="); ok {
				vlan = v
			}
		}
		if vlan != "" && strconv.Itoa(int(sp.pc.VLAN)) != vlan || sp.pc.VLAN > 4094 {
			t.Fatalf("%q accepted as VLAN %d", spec, sp.pc.VLAN)
		}
		if (sp.pc.MAC != nil || sp.pc.IPv4.IsValid()) && !sp.pc.AntiSpoof {
			t.Fatalf("%q accepted with a MAC or an IP and no anti-spoofing", spec)
		}
		if sp.pc.MAC != nil && sp.pc.MAC[0]&1 != 0 || sp.pc.Rate < 0 {
			t.Fatalf("%q accepted as %+v", spec, sp.pc)
		}
	})
}
