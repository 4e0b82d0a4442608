package vswitch_test

import (
	"net/netip"
	"testing"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/netdev/vswitch"
)

// FuzzIngress feeds arbitrary frames (and headers) into an anti-spoofing
// port: the switch never panics, and nothing it forwards leaves with a
// source MAC other than the port's learned one.
func FuzzIngress(f *testing.F) {
	f.Add(make([]byte, netdev.HeaderSize), arp(mac(1), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")))
	f.Add(make([]byte, netdev.HeaderSize), ipv4(bcast, mac(1), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")))
	f.Add([]byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, eth(bcast, mac(1), "x"))
	f.Fuzz(func(t *testing.T, hdr, fr []byte) {
		if len(hdr) != netdev.HeaderSize || len(fr) > netdev.MaxFrameLen {
			return
		}
		sw := vswitch.New(vswitch.Config{})
		defer sw.Close()
		a, ta := nettest.Pair(16)
		p, err := sw.AddPort(a, vswitch.PortConfig{AntiSpoof: true, MAC: []byte{0x52, 0x54, 0, 0, 0, 1}})
		if err != nil {
			t.Fatal(err)
		}
		b, tb := nettest.Pair(16)
		if _, err := sw.AddPort(b, vswitch.PortConfig{}); err != nil {
			t.Fatal(err)
		}
		ta.WriteFrames([][][]byte{{hdr, fr}, {make([]byte, netdev.HeaderSize), eth(bcast, mac(1), "end")}})
		for {
			_, got, err := tb.Recv(wait)
			if err != nil {
				t.Fatalf("the marker did not arrive: %v (%+v)", err, p.Stats())
			}
			if [6]byte(got[6:12]) != mac(1) {
				t.Fatalf("forwarded a frame from %x", got[6:12])
			}
			if string(got[14:17]) == "end" {
				return
			}
		}
	})
}
