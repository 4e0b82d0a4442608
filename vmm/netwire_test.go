package vmm

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/bond"
)

// A socket NIC with a firewall and a pcap mirror: the stack is built in
// order, frames the firewall drops never reach the socket, and the VM
// closes the whole stack once.
func TestNetBackendInterposers(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("unix", filepath.Join(dir, "sw"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	rules := filepath.Join(dir, "fw")
	os.WriteFile(rules, []byte("default out drop\nallow out proto ipv6\n"), 0o644)
	capture := filepath.Join(dir, "n.pcap")
	var v VM
	be, err := single(v.netBackends(config.Net{Socket: filepath.Join(dir, "sw"), Firewall: rules, Pcap: capture}))
	if err != nil {
		t.Fatal(err)
	}
	if len(v.closers) != 1 || v.closers[0] != be {
		t.Fatalf("closers %v", v.closers)
	}
	l.(*net.UnixListener).SetDeadline(time.Now().Add(10 * time.Second))
	peer, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	ipv4 := make([]byte, 60)
	ipv4[12], ipv4[13], ipv4[14] = 0x08, 0x00, 0x45
	ipv6 := make([]byte, 60)
	ipv6[12], ipv6[13], ipv6[14] = 0x86, 0xdd, 0x60
	h := make([]byte, netdev.HeaderSize)
	// IPv4 (a malformed one, too short for its header's claims) is
	// dropped, IPv6 passes... if it parses: give it a valid length.
	ipv6[14+5], ipv6[14+6] = 6, 59 // payload length 6 (14+40+6 = 60), no next header
	if n, err := be.WriteFrames([][][]byte{{h, ipv4}, {h, ipv6}}); n != 2 || err != nil {
		t.Fatalf("WriteFrames: %d %v", n, err)
	}
	peer.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 4+60)
	if _, err := io.ReadFull(peer, got); err != nil || !bytes.Equal(got[4:], ipv6) {
		t.Fatalf("peer got %x, %v", got, err)
	}
	// The stack's counters, as VM.Stats shows them under "backend".
	stats := backendStats([]io.Closer{be})
	for _, k := range []string{"pcap", "firewall", "socket"} {
		if stats[k] == nil {
			t.Errorf("no %s counters in %v", k, stats)
		}
	}
	c := CountersOf(map[string]any{"net0": map[string]any{"backend": stats}})["net0"]
	if c["backend_firewall_malformed"] != 1 || c["backend_socket_frames_out"] != 1 {
		t.Errorf("counters %v", c)
	}
	be.Close()
	st, err := os.Stat(capture)
	if err != nil || st.Size() == 0 {
		t.Fatalf("capture: %v", err)
	}

	// A missing rules file is one clear error, and nothing stays open.
	var v2 VM
	if _, err := single(v2.netBackends(config.Net{Socket: filepath.Join(dir, "sw"), Firewall: filepath.Join(dir, "none")})); err == nil || !strings.Contains(err.Error(), "firewall rules") {
		t.Fatalf("missing rules: %v", err)
	}
	if len(v2.closers) != 0 {
		t.Fatalf("closers after a failure: %v", v2.closers)
	}
}

// A bonded NIC dials every socket and sends on the first.
func TestNetBackendBond(t *testing.T) {
	dir := t.TempDir()
	var ls []net.Listener
	var paths []string
	for _, n := range []string{"a", "b"} {
		p := filepath.Join(dir, n)
		l, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		l.(*net.UnixListener).SetDeadline(time.Now().Add(10 * time.Second))
		ls, paths = append(ls, l), append(paths, p)
	}
	var v VM
	be, err := single(v.netBackends(config.Net{Bond: &config.NetBond{Sockets: paths}}))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	var peers []net.Conn
	for _, l := range ls {
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		peers = append(peers, c)
	}
	f := make([]byte, 60)
	f[12], f[13] = 0x88, 0xb5
	if _, err := be.WriteFrames([][][]byte{{make([]byte, netdev.HeaderSize), f}}); err != nil {
		t.Fatal(err)
	}
	peers[0].SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 64)
	if _, err := io.ReadFull(peers[0], got); err != nil || !bytes.Equal(got[4:], f) {
		t.Fatalf("first member's peer got %x, %v", got, err)
	}
	if _, err := single(v.netBackends(config.Net{Bond: &config.NetBond{Mode: "round-robin", Sockets: paths}})); err == nil {
		t.Fatal("unknown bond mode accepted")
	}
}

// A bond whose first member's switch is away (at the VM's start, or when
// a guest reboot rebuilds the NIC) starts on the other member, with no
// failover counted, and warns of the missing one; a bond with no member
// reachable is refused.
func TestNetBackendBondMemberDown(t *testing.T) {
	dir := t.TempDir()
	gone, there := filepath.Join(dir, "gone"), filepath.Join(dir, "there")
	l, err := net.Listen("unix", there)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.(*net.UnixListener).SetDeadline(time.Now().Add(10 * time.Second))
	var logged bytes.Buffer
	v := VM{log: slog.New(slog.NewTextHandler(&logged, nil))}
	be, err := single(v.netBackends(config.Net{Bond: &config.NetBond{Sockets: []string{gone, there}}}))
	if err != nil {
		t.Fatalf("a bond with one member reachable: %v", err)
	}
	defer be.Close()
	peer, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	f := make([]byte, 60)
	f[12], f[13] = 0x88, 0xb5
	if _, err := be.WriteFrames([][][]byte{{make([]byte, netdev.HeaderSize), f}}); err != nil {
		t.Fatal(err)
	}
	peer.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 64)
	if _, err := io.ReadFull(peer, got); err != nil || !bytes.Equal(got[4:], f) {
		t.Fatalf("the reachable member's peer got %x, %v", got, err)
	}
	if st := be.(*bond.Bond).Stats(); st.Active != 1 || st.Failovers != 0 {
		t.Fatalf("bond stats %+v: want it started on member 1 with no failover", st)
	}
	if !strings.Contains(logged.String(), "NIC bond member could not be connected") || !strings.Contains(logged.String(), gone) {
		t.Fatalf("no warning names the missing member; log:\n%s", logged.String())
	}
	if _, err := single(v.netBackends(config.Net{Bond: &config.NetBond{Sockets: []string{gone, gone + "2"}}})); err == nil {
		t.Fatal("a bond with no member reachable was accepted")
	}
}
