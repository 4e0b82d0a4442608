package bond_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/bond"
	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/netdev/socket"
)

const wait = 10 * time.Second

// udp builds a UDP/IPv4 frame of flow sport→dport with a sequence number.
func udp(sport, dport uint16, seq uint32) []byte {
	b := make([]byte, 14+20+8+4)
	copy(b, []byte{0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 8, 0})
	ip := b[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 32)
	ip[9] = 17
	copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	binary.BigEndian.PutUint16(ip[20:], sport)
	binary.BigEndian.PutUint16(ip[22:], dport)
	binary.BigEndian.PutUint16(ip[24:], 12)
	binary.BigEndian.PutUint32(ip[28:], seq)
	return b
}

func seqOf(f []byte) uint32 { return binary.BigEndian.Uint32(f[14+28:]) }

var hdr = make([]byte, netdev.HeaderSize)

// Active-backup over in-memory members: a failing write moves the bond to
// the next member and the frame is not lost; frames received on the
// backup are dropped; reads come from the active member.
func TestActiveBackupFailsOverWithoutLoss(t *testing.T) {
	a, pa := nettest.Pair(64)
	c, pc := nettest.Pair(64)
	b, err := bond.New([]netdev.Backend{a, c}, bond.Options{Mode: bond.ActiveBackup, RetryAfter: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i := range 3 {
		if _, err := b.WriteFrames([][][]byte{{hdr, udp(1, 2, uint32(i))}}); err != nil {
			t.Fatal(err)
		}
	}
	if pa.Queued() != 3 || pc.Queued() != 0 {
		t.Fatalf("before failover: %d on the active, %d on the backup", pa.Queued(), pc.Queued())
	}
	a.FailNextWrite(errors.New("cable cut"))
	if n, err := b.WriteFrames([][][]byte{{hdr, udp(1, 2, 3)}, {hdr, udp(1, 2, 4)}}); n != 2 || err != nil {
		t.Fatalf("write across the failover: %d %v", n, err)
	}
	if pc.Queued() != 2 {
		t.Fatalf("the backup got %d frames, want both", pc.Queued())
	}
	for _, want := range []uint32{3, 4} {
		_, f, _ := pc.Recv(wait)
		if seqOf(f) != want {
			t.Fatalf("backup got seq %d, want %d", seqOf(f), want)
		}
	}
	// The old active member's traffic is now ignored, the new one's read.
	pa.Send(netdev.Header{}, udp(9, 9, 100))
	pc.Send(netdev.Header{}, udp(9, 9, 200))
	buf := [][]byte{make([]byte, netdev.MaxPacketLen)}
	sizes := []int{0}
	b.SetReadDeadline(time.Now().Add(wait))
	if _, err := b.ReadFrames(buf, sizes); err != nil || seqOf(buf[0][netdev.HeaderSize:sizes[0]]) != 200 {
		t.Fatalf("read %v seq %d", err, seqOf(buf[0][netdev.HeaderSize:sizes[0]]))
	}
	st := b.Stats()
	if st.Active != 1 || st.Failovers != 1 || st.Members[0].Healthy || st.Members[0].Failures != 1 {
		t.Fatalf("stats %+v", st)
	}
	// A frame's own fault is not a member's: no failover.
	c.FailNextWrite(fmt.Errorf("%w: bad", netdev.ErrHeader))
	if _, err := b.WriteFrames([][][]byte{{hdr, udp(1, 2, 5)}}); !errors.Is(err, netdev.ErrHeader) {
		t.Fatalf("header error: %v", err)
	}
	if b.Stats().Failovers != 1 {
		t.Fatal("a bad frame caused a failover")
	}
	// With both members failed, writing says so.
	c.FailNextWrite(errors.New("second cut"))
	if _, err := b.WriteFrames([][][]byte{{hdr, udp(1, 2, 6)}}); !errors.Is(err, bond.ErrAllDown) {
		t.Fatalf("all down: %v", err)
	}
}

// Balance: each flow sticks to one member, flows spread over both, and
// when a member fails its flows move to the other.
func TestBalanceByFlow(t *testing.T) {
	a, pa := nettest.Pair(4096)
	c, pc := nettest.Pair(4096)
	b, err := bond.New([]netdev.Backend{a, c}, bond.Options{Mode: bond.Balance, RetryAfter: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const flows = 32
	for round := range 4 {
		for fl := range flows {
			b.WriteFrames([][][]byte{{hdr, udp(uint16(1000+fl), 80, uint32(round))}})
		}
	}
	where := map[uint16]string{}
	collect := func(p *nettest.Endpoint, name string) int {
		n := 0
		for p.Queued() > 0 {
			_, f, err := p.Recv(wait)
			if err != nil {
				t.Fatal(err)
			}
			sport := binary.BigEndian.Uint16(f[34:])
			if w, ok := where[sport]; ok && w != name {
				t.Fatalf("flow %d on both members", sport)
			}
			where[sport] = name
			n++
		}
		return n
	}
	na, nc := collect(pa, "a"), collect(pc, "c")
	if na+nc != 4*flows || na == 0 || nc == 0 {
		t.Fatalf("frames: %d on a, %d on c; want %d spread over both", na, nc, 4*flows)
	}
	a.FailNextWrite(errors.New("cut"))
	for fl := range flows {
		b.WriteFrames([][][]byte{{hdr, udp(uint16(1000+fl), 80, 9)}})
	}
	if pa.Queued() != 0 || pc.Queued() != flows {
		t.Fatalf("after a's failure: %d on a, %d on c", pa.Queued(), pc.Queued())
	}
}

// Over real sockets: the active member's peer goes away; the socket
// reports its link down and the bond carries on over the other socket.
func TestActiveBackupOverSockets(t *testing.T) {
	dir := t.TempDir()
	var peers [2]net.Conn
	var members []netdev.Backend
	for i := range 2 {
		l, err := net.Listen("unix", filepath.Join(dir, fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		s, err := socket.Dial(filepath.Join(dir, fmt.Sprint(i)), socket.Options{})
		if err != nil {
			t.Fatal(err)
		}
		members = append(members, s)
		peers[i], err = l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer peers[i].Close()
	}
	b, err := bond.New(members, bond.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	read := func(c net.Conn) uint32 {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(wait))
		var p [4]byte
		if _, err := io.ReadFull(c, p[:]); err != nil {
			t.Fatal(err)
		}
		f := make([]byte, binary.BigEndian.Uint32(p[:]))
		if _, err := io.ReadFull(c, f); err != nil {
			t.Fatal(err)
		}
		return seqOf(f)
	}
	b.WriteFrames([][][]byte{{hdr, udp(1, 2, 1)}})
	if s := read(peers[0]); s != 1 {
		t.Fatalf("seq %d", s)
	}
	peers[0].Close()
	<-members[0].(*socket.Conn).Dead()
	for i := uint32(2); i < 5; i++ {
		if _, err := b.WriteFrames([][][]byte{{hdr, udp(1, 2, i)}}); err != nil {
			t.Fatal(err)
		}
		if s := read(peers[1]); s != i {
			t.Fatalf("seq %d on the backup, want %d", s, i)
		}
	}
	if st := b.Stats(); st.Active != 1 || st.Failovers != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestNeedsTwo(t *testing.T) {
	a, _ := nettest.Pair(1)
	if _, err := bond.New([]netdev.Backend{a}, bond.Options{}); err == nil {
		t.Fatal("a bond of one accepted")
	}
	if _, err := bond.ParseMode("round-robin"); err == nil {
		t.Fatal("unknown mode accepted")
	}
}

// A guest that only receives must not depend on its own next write for
// the failover: when the active member's link goes down, frames arriving
// on the backup are delivered at once (the retransmissions of a download
// whose segments died in the failed link), with no write to the bond.
func TestActiveBackupFailsOverOnReceive(t *testing.T) {
	dir := t.TempDir()
	var peers [2]net.Conn
	var members []netdev.Backend
	for i := range 2 {
		path := filepath.Join(dir, fmt.Sprint(i))
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		s, err := socket.Dial(path, socket.Options{})
		if err != nil {
			t.Fatal(err)
		}
		members = append(members, s)
		if peers[i], err = l.Accept(); err != nil {
			t.Fatal(err)
		}
		defer peers[i].Close()
	}
	moved := make(chan [2]int, 4)
	b, err := bond.New(members, bond.Options{OnFailover: func(from, to int) { moved <- [2]int{from, to} }})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	peers[0].Close()
	<-members[0].(*socket.Conn).Dead()
	f := udp(5, 6, 77)
	var p [4]byte
	binary.BigEndian.PutUint32(p[:], uint32(len(f)))
	if _, err := peers[1].Write(append(p[:], f...)); err != nil {
		t.Fatal(err)
	}
	buf := [][]byte{make([]byte, netdev.MaxPacketLen)}
	sizes := []int{0}
	b.SetReadDeadline(time.Now().Add(wait))
	if _, err := b.ReadFrames(buf, sizes); err != nil {
		t.Fatalf("the frame on the backup never reached the guest after the active member's link went down: %v (stats %+v)", err, b.Stats())
	}
	if s := seqOf(buf[0][netdev.HeaderSize:sizes[0]]); s != 77 {
		t.Fatalf("read seq %d, want 77", s)
	}
	if st := b.Stats(); st.Active != 1 || st.Failovers != 1 || st.Members[1].RxDropped != 0 {
		t.Fatalf("stats after the failover on receive: %+v", st)
	}
	if n := len(moved); n != 1 {
		t.Fatalf("OnFailover was called %d times, want once", n)
	}
	if m := <-moved; m != [2]int{0, 1} {
		t.Fatalf("OnFailover was told of a move from member %d to %d, want 0 to 1", m[0], m[1])
	}
}
