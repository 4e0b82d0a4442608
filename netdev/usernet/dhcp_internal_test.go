package usernet

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// FuzzDHCP: the DHCP parser takes any frame without panicking, and every
// reply it leads to is a well-formed frame (lengths and checksums right,
// from the gateway's port 67 to port 68) that answers the same
// transaction with the guest's address or none.
func FuzzDHCP(f *testing.F) {
	a, err := Config{DNSUpstream: netip.MustParseAddrPort("127.0.0.1:53")}.resolve()
	if err != nil {
		f.Fatal(err)
	}
	mac := []byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	for _, typ := range []byte{dhcpDiscover, dhcpRequest, dhcpInform, dhcpRelease} {
		body := make([]byte, 240, 300)
		body[0], body[1], body[2] = 1, 1, 6
		copy(body[28:], mac)
		copy(body[236:], dhcpMagic[:])
		body = append(body, optMsgType, 1, typ, optRequestedIP, 4, 10, 0, 2, 15, optEnd)
		f.Add(udpFrame(mac, []byte{255, 255, 255, 255, 255, 255}, [4]byte{}, [4]byte{255, 255, 255, 255}, 68, 67, body))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		m, ok := parseDHCP(frame)
		if !ok {
			return
		}
		r := dhcpReply(&a, m)
		if r == nil {
			return
		}
		if len(r) > ethHdrLen+ipv4MinHdr+udpHdrLen+bootpMinLen+64 {
			t.Fatalf("reply of %d bytes", len(r))
		}
		u, ip, ok := parseUDPv4(r)
		if !ok {
			t.Fatalf("reply does not parse: % x", r)
		}
		if binary.BigEndian.Uint16(u[0:]) != dhcpServerPort || binary.BigEndian.Uint16(u[2:]) != dhcpClientPort {
			t.Fatalf("reply ports % x", u[:4])
		}
		if netip.AddrFrom4([4]byte(ip[12:16])) != a.gateway {
			t.Fatalf("reply from %v", ip[12:16])
		}
		b := u[udpHdrLen:]
		if [4]byte(b[4:8]) != m.xid {
			t.Fatal("reply to another transaction")
		}
		if y := netip.AddrFrom4([4]byte(b[16:20])); y != a.guest && !y.IsUnspecified() {
			t.Fatalf("offered %s", y)
		}
	})
}

func TestParseResolvConf(t *testing.T) {
	for in, want := range map[string]string{
		"# comment\nsearch example.com\nnameserver 192.168.1.1\nnameserver 8.8.8.8\n":     "192.168.1.1:53",
		"nameserver\nnameserver bogus\nnameserver 0.0.0.0\n  nameserver   127.0.0.53  \n": "127.0.0.53:53",
		"nameserver fe80::1%eth0\n":                           "[fe80::1%eth0]:53",
		"nameserver ::ffff:10.1.2.3\n":                        "10.1.2.3:53",
		"options edns0\n":                                     "invalid AddrPort",
		"nameserver 1.2.3.4\n" + string(make([]byte, 100000)): "1.2.3.4:53",
	} {
		got, _ := parseResolvConf([]byte(in))
		if got.String() != want {
			t.Errorf("%.40q: %s, want %s", in, got, want)
		}
	}
}

// FuzzResolvConf: any file gives a nameserver or none, never a panic.
func FuzzResolvConf(f *testing.F) {
	f.Add([]byte("nameserver 10.0.0.1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if a, ok := parseResolvConf(b); ok && (!a.IsValid() || a.Port() != 53) {
			t.Fatalf("%v", a)
		}
	})
}
