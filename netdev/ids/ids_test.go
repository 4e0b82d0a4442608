package ids_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/ids"
	"github.com/viovmm/vio/netdev/nettest"
)

const wait = 10 * time.Second

// inspector is a real inspector process's logic on a real UNIX socket:
// it reads messages and, if verdicts are wanted, drops frames whose
// payload contains "EVIL". answer=false makes it a silent (stuck) one.
type inspector struct {
	t      *testing.T
	path   string
	answer bool
	mu     sync.Mutex
	seen   []ids.Message
	conn   net.Conn
	ready  chan struct{}
}

func startInspector(t *testing.T, answer bool) *inspector {
	in := &inspector{t: t, path: filepath.Join(t.TempDir(), "ids"), answer: answer, ready: make(chan struct{})}
	l, err := net.Listen("unix", in.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		in.mu.Lock()
		in.conn = c
		in.mu.Unlock()
		close(in.ready)
		r := bufio.NewReader(c)
		for {
			m, err := ids.ReadMessage(r)
			if err != nil {
				return
			}
			in.mu.Lock()
			in.seen = append(in.seen, m)
			in.mu.Unlock()
			if in.answer && m.Flags&ids.FlagVerdict != 0 {
				c.Write(ids.AppendVerdict(nil, m.ID, bytes.Contains(m.Frame, []byte("EVIL"))))
			}
		}
	}()
	return in
}

func (in *inspector) count() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.seen)
}

func frame(tag string) []byte {
	f := make([]byte, 60)
	copy(f, []byte{0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 0x88, 0xb5})
	copy(f[14:], tag)
	return f
}

func tags(evilEvery, n int) []string {
	var out []string
	for i := range n {
		if evilEvery > 0 && i%evilEvery == 1 {
			out = append(out, fmt.Sprintf("EVIL %d", i))
		} else {
			out = append(out, fmt.Sprintf("good %d", i))
		}
	}
	return out
}

// IPS: the inspector drops exactly the frames matching its pattern, both
// ways, and the rest arrive in order.
func TestPreventDropsExactlyTheMatches(t *testing.T) {
	in := startInspector(t, true)
	a, net_ := nettest.Pair(256)
	h, err := ids.Dial(a, in.path, ids.Options{Mode: ids.Prevent, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	hdr := make([]byte, netdev.HeaderSize)
	ts := tags(3, 30)
	for _, tag := range ts {
		if n, err := h.WriteFrames([][][]byte{{hdr, frame(tag)}}); n != 1 || err != nil {
			t.Fatal(n, err)
		}
		net_.Send(netdev.Header{}, frame(tag))
	}
	var wantOut []string
	for _, tag := range ts {
		if tag[:4] == "good" {
			wantOut = append(wantOut, tag)
		}
	}
	// From the guest: verdicts come in order from this inspector, so
	// the frames do too.
	for _, want := range wantOut {
		_, got, err := net_.Recv(wait)
		if err != nil {
			t.Fatalf("network side waiting for %q: %v", want, err)
		}
		if string(got[14:14+len(want)]) != want {
			t.Fatalf("network got %q, want %q", got[14:24], want)
		}
	}
	// To the guest.
	buf := [][]byte{make([]byte, netdev.MaxPacketLen)}
	sizes := []int{0}
	h.SetReadDeadline(time.Now().Add(wait))
	for _, want := range wantOut {
		if _, err := h.ReadFrames(buf, sizes); err != nil {
			t.Fatalf("guest side waiting for %q: %v", want, err)
		}
		if got := string(buf[0][netdev.HeaderSize+14 : netdev.HeaderSize+14+len(want)]); got != want {
			t.Fatalf("guest got %q, want %q", got, want)
		}
	}
	st := h.Stats()
	if st.Dropped != 20 || st.Passed != 40 || st.Inspected != 60 || st.Overflow+st.Timeouts+st.Down != 0 {
		t.Fatalf("stats %+v", st)
	}
	if q := net_.Queued(); q != 0 {
		t.Fatalf("%d extra frames reached the network", q)
	}
}

// IPS with an inspector that never answers: the guest is never stalled,
// frames beyond the queue overflow, the rest time out; nothing passes.
func TestPreventFailsClosedOnASilentInspector(t *testing.T) {
	in := startInspector(t, false)
	a, net_ := nettest.Pair(256)
	h, err := ids.Dial(a, in.path, ids.Options{Mode: ids.Prevent, Queue: 8, Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	hdr := make([]byte, netdev.HeaderSize)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 20 {
			h.WriteFrames([][][]byte{{hdr, frame(fmt.Sprint("good ", i))}})
		}
	}()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("WriteFrames stalled on a silent inspector")
	}
	deadline := time.Now().Add(wait)
	for h.Stats().Timeouts+h.Stats().Overflow < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("frames neither timed out nor overflowed: %+v", h.Stats())
		}
		time.Sleep(10 * time.Millisecond) // polling the expirer, bounded
	}
	st := h.Stats()
	if st.Overflow != 12 || st.Timeouts != 8 || st.Passed != 0 || net_.Queued() != 0 {
		t.Fatalf("stats %+v, %d frames passed", st, net_.Queued())
	}
}

// IPS with an inspector that goes away: what comes next is dropped.
func TestPreventFailsClosedWhenTheInspectorLeaves(t *testing.T) {
	in := startInspector(t, true)
	a, net_ := nettest.Pair(256)
	h, err := ids.Dial(a, in.path, ids.Options{Mode: ids.Prevent})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	<-in.ready
	in.conn.Close()
	deadline := time.Now().Add(wait)
	for h.Stats().Connected {
		if time.Now().After(deadline) {
			t.Fatal("the hook did not notice the inspector leaving")
		}
		time.Sleep(10 * time.Millisecond) // polling a remote state, bounded
	}
	hdr := make([]byte, netdev.HeaderSize)
	h.WriteFrames([][][]byte{{hdr, frame("good after")}})
	if st := h.Stats(); st.Down != 1 || net_.Queued() != 0 {
		t.Fatalf("stats %+v, %d passed", st, net_.Queued())
	}
}

// IDS: frames pass untouched whatever the inspector thinks, and it sees
// a copy of each, with its direction.
func TestMonitorCopiesEverything(t *testing.T) {
	in := startInspector(t, true)
	a, net_ := nettest.Pair(256)
	h, err := ids.Dial(a, in.path, ids.Options{Mode: ids.Monitor})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	hdr := make([]byte, netdev.HeaderSize)
	for _, tag := range tags(2, 10) {
		h.WriteFrames([][][]byte{{hdr, frame(tag)}})
		if _, got, err := net_.Recv(wait); err != nil || string(got[14:18]) != tag[:4] {
			t.Fatalf("%q did not pass: %v", tag, err)
		}
	}
	net_.Send(netdev.Header{}, frame("EVIL in"))
	buf := [][]byte{make([]byte, netdev.MaxPacketLen)}
	h.SetReadDeadline(time.Now().Add(wait))
	if _, err := h.ReadFrames(buf, []int{0}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for in.count() < 11 {
		if time.Now().After(deadline) {
			t.Fatalf("inspector saw %d of 11 frames", in.count())
		}
		time.Sleep(10 * time.Millisecond) // polling a remote state, bounded
	}
	in.mu.Lock()
	last := in.seen[10]
	first := in.seen[0]
	in.mu.Unlock()
	if last.Dir != ids.DirToGuest || first.Dir != ids.DirFromGuest || last.Flags != 0 || !bytes.Equal(last.Frame, frame("EVIL in")) {
		t.Fatalf("first %+v last %+v", first, last)
	}
}
