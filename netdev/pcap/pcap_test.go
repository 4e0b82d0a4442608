package pcap_test

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/netdev/pcap"
)

const wait = 10 * time.Second

var (
	macA = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
	macB = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2}
)

// ping builds an ICMP echo (request from A or reply from B) with seq.
func ping(t testing.TB, reply bool, seq uint16, size int) []byte {
	src, dst, smac, dmac := net.IPv4(10, 0, 0, 1), net.IPv4(10, 0, 0, 2), macA, macB
	typ := uint8(layers.ICMPv4TypeEchoRequest)
	if reply {
		src, dst, smac, dmac = dst, src, macB, macA
		typ = layers.ICMPv4TypeEchoReply
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: smac, DstMAC: dmac, EthernetType: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: src, DstIP: dst},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: 77, Seq: seq},
		gopacket.Payload(bytes.Repeat([]byte{byte(seq)}, size)))
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readBack(t *testing.T, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		t.Fatalf("link type %v", r.LinkType())
	}
	var out [][]byte
	for {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			break
		}
		if ci.CaptureLength != len(data) || ci.Length != len(data) {
			t.Fatalf("capture info %+v for %d bytes", ci, len(data))
		}
		out = append(out, data)
	}
	return out
}

// exchange sends n pings from the guest (through the mirror) and n
// replies to it, in lockstep, and returns what crossed in order.
func exchange(t *testing.T, m *pcap.Mirror, peer *nettest.Endpoint, first uint16, n int) [][]byte {
	t.Helper()
	var want [][]byte
	buf := [][]byte{make([]byte, netdev.MaxPacketLen)}
	sizes := []int{0}
	for i := range n {
		seq := first + uint16(i)
		req := ping(t, false, seq, 100+i)
		// A gather list split inside the header and the frame.
		h := make([]byte, netdev.HeaderSize)
		if _, err := m.WriteFrames([][][]byte{{h[:5], h[5:], req[:20], req[20:]}}); err != nil {
			t.Fatal(err)
		}
		if _, got, err := peer.Recv(wait); err != nil || !bytes.Equal(got, req) {
			t.Fatalf("peer got %x, %v", got, err)
		}
		rep := ping(t, true, seq, 100+i)
		peer.Send(netdev.Header{}, rep)
		m.SetReadDeadline(time.Now().Add(wait))
		if _, err := m.ReadFrames(buf, sizes); err != nil || !bytes.Equal(buf[0][netdev.HeaderSize:sizes[0]], rep) {
			t.Fatalf("guest got %v", err)
		}
		want = append(want, req, rep)
	}
	return want
}

func TestMirrorBothWaysReadByGopacketAndTcpdump(t *testing.T) {
	path := filepath.Join(t.TempDir(), "n.pcap")
	a, peer := nettest.Pair(16)
	m, err := pcap.Open(a, path)
	if err != nil {
		t.Fatal(err)
	}
	want := exchange(t, m, peer, 1, 20)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if s := m.Stats(); s.Written != 40 || s.Dropped != 0 || s.Err != "" {
		t.Fatalf("stats %+v", s)
	}
	got := readBack(t, path)
	if len(got) != len(want) {
		t.Fatalf("capture holds %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("frame %d differs", i)
		}
	}

	// A guest reboot reopens the file: frames are appended.
	a2, peer2 := nettest.Pair(16)
	m2, err := pcap.Open(a2, path)
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, exchange(t, m2, peer2, 100, 5)...)
	m2.Close()
	if got := readBack(t, path); len(got) != len(want) || !bytes.Equal(got[len(got)-1], want[len(want)-1]) {
		t.Fatalf("after appending: %d frames, want %d", len(got), len(want))
	}

	// tcpdump, the oracle: it reads every frame and decodes each ping.
	tcpdump, err := exec.LookPath("tcpdump")
	if err != nil {
		t.Fatal("tcpdump is not installed: run scripts/setup-host")
	}
	out, err := exec.Command(tcpdump, "-nn", "-r", path).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var pkts []string
	for _, l := range lines {
		if strings.Contains(l, "ICMP") {
			pkts = append(pkts, l)
		}
	}
	if len(pkts) != len(want) {
		t.Fatalf("tcpdump decoded %d ICMP packets, want %d:\n%s", len(pkts), len(want), out)
	}
	if !strings.Contains(pkts[0], "10.0.0.1 > 10.0.0.2: ICMP echo request, id 77, seq 1") ||
		!strings.Contains(pkts[1], "10.0.0.2 > 10.0.0.1: ICMP echo reply, id 77, seq 1") {
		t.Fatalf("tcpdump read:\n%s", strings.Join(pkts[:2], "\n"))
	}
}

func TestRefusesForeignFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(path, []byte("these are not frames, keep them please"), 0o644)
	a, _ := nettest.Pair(1)
	if _, err := pcap.Open(a, path); err == nil || !strings.Contains(err.Error(), "not a pcap capture") {
		t.Fatalf("%v", err)
	}
	if b, _ := os.ReadFile(path); !strings.HasPrefix(string(b), "these are not frames") {
		t.Fatal("the foreign file was changed")
	}
}

// stuck accepts the file header, then blocks every write until released.
type stuck struct {
	release chan struct{}
	n       int
}

func (s *stuck) Write(p []byte) (int, error) {
	s.n++
	if s.n > 1 {
		<-s.release
	}
	return len(p), nil
}

// A stalled capture file never stalls the guest: frames go through, the
// copies beyond the queue are dropped and counted.
func TestSlowFileDropsCopiesNotFrames(t *testing.T) {
	h := make([]byte, netdev.HeaderSize)
	f := ping(t, false, 1, 10)
	// Before anything is dropped, the writer may take frames into its
	// 256 KiB buffer (a pcap record is 16 bytes and the frame) until its
	// write blocks, and the queue holds 4096 more. Send past both, so a
	// drop must happen however the writer is scheduled.
	n := 4096 + (256<<10)/(16+len(f)) + 1000
	a, peer := nettest.Pair(n)
	s := &stuck{release: make(chan struct{})}
	m, err := pcap.New(a, s)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range n {
			m.WriteFrames([][][]byte{{h, f}})
		}
	}()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("WriteFrames stalled on a stuck capture file")
	}
	if q := peer.Queued(); q != n {
		t.Fatalf("peer got %d frames, want %d", q, n)
	}
	st := m.Stats()
	if st.Dropped == 0 {
		t.Fatalf("nothing dropped of %d frames: %+v", n, st)
	}
	close(s.release)
	m.Close()
	if st := m.Stats(); st.Written+st.Dropped != uint64(n) {
		t.Fatalf("written %d + dropped %d != %d", st.Written, st.Dropped, n)
	}
}
