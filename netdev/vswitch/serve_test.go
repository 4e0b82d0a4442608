package vswitch_test

import (
	"bytes"
	"encoding/json"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/socket"
	"github.com/viovmm/vio/netdev/vswitch"
)

// Guests join over real UNIX sockets in the stream framing; the control
// socket reports per-port counters; a guest that disconnects frees its
// port.
func TestServeOverSockets(t *testing.T) {
	dir := t.TempDir()
	sw := vswitch.New(vswitch.Config{})
	defer sw.Close()
	l, err := net.Listen("unix", filepath.Join(dir, "sw"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cl, err := net.Listen("unix", filepath.Join(dir, "ctl"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	go sw.Serve(l, vswitch.PortConfig{Name: "g", AntiSpoof: true})
	go sw.ServeControl(cl)

	var gs []*socket.Conn
	for range 3 {
		c, err := socket.Dial(filepath.Join(dir, "sw"), socket.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		gs = append(gs, c)
	}
	stats := func() vswitch.Stats {
		t.Helper()
		c, err := net.Dial("unix", filepath.Join(dir, "ctl"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var st vswitch.Stats
		if err := json.NewDecoder(c).Decode(&st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	waitPorts := func(n int) {
		t.Helper()
		deadline := time.Now().Add(wait)
		for connected(stats()) != n {
			if time.Now().After(deadline) {
				t.Fatalf("the switch does not reach %d ports", n)
			}
			time.Sleep(10 * time.Millisecond) // polling a remote state, bounded
		}
	}
	send := func(c *socket.Conn, f []byte) {
		t.Helper()
		if _, err := c.WriteFrames([][][]byte{{make([]byte, netdev.HeaderSize), f}}); err != nil {
			t.Fatal(err)
		}
	}
	recv := func(c *socket.Conn) []byte {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, netdev.MaxPacketLen)
		sz := []int{0}
		if _, err := c.ReadFrames([][]byte{buf}, sz); err != nil {
			t.Fatal(err)
		}
		return buf[netdev.HeaderSize:sz[0]]
	}
	// Accepting is asynchronous: the ports exist once the switch lists
	// them. Then guest i's broadcast reaches the others.
	waitPorts(3)
	for i, g := range gs {
		send(g, eth(bcast, mac(byte(i+1)), "hello"))
	}
	for i, g := range gs {
		for range 2 {
			f := recv(g)
			if !bytes.Equal(f[6:12], []byte{0x52, 0x54, 0, 0, 0, f[11]}) || f[11] == byte(i+1) {
				t.Fatalf("guest %d got %x", i, f[:14])
			}
		}
	}
	// Unicast 1 → 3.
	u := eth(mac(3), mac(1), "one to three")
	send(gs[0], u)
	if got := recv(gs[2]); !bytes.Equal(got, u) {
		t.Fatalf("guest 3 got %x", got[:14])
	}

	st := stats()
	if len(st.Ports) != 3 || st.Addresses != 3 {
		t.Fatalf("stats %+v", st)
	}
	names := map[string]bool{}
	for _, p := range st.Ports {
		names[p.Name] = true
		if p.FramesIn == 0 || p.FramesOut == 0 {
			t.Fatalf("port %+v moved nothing", p)
		}
	}
	if !names["g"] || !names["g-2"] || !names["g-3"] {
		t.Fatalf("port names %v", names)
	}

	// Guest 2 leaves; its port goes down and keeps its counters.
	gs[1].Close()
	waitPorts(2)
	for _, p := range stats().Ports {
		if p.Name == "g-2" && (p.Connected || p.FramesIn == 0) {
			t.Fatalf("guest 2's port after it left: %+v", p)
		}
	}
}

// connected counts the ports with a peer.
func connected(st vswitch.Stats) int {
	n := 0
	for _, p := range st.Ports {
		if p.Connected {
			n++
		}
	}
	return n
}
