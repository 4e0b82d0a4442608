package events

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestEventJSONIsCloudHypervisorShape(t *testing.T) {
	e := Event{Timestamp: Duration(1500 * time.Millisecond), Source: "vm", Event: "booted"}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"timestamp":{"secs":1,"nanos":500000000},"source":"vm","event":"booted","properties":null}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
	var back Event
	if err := json.Unmarshal(b, &back); err != nil || back.Timestamp != e.Timestamp {
		t.Fatalf("round trip: %v %+v", err, back)
	}
	if err := json.Unmarshal([]byte(`{"secs":1,"nanos":1000000000}`), new(Duration)); err == nil {
		t.Fatal("nanos of a whole second accepted")
	}
}

func TestPublishReachesEverySubscriberInOrder(t *testing.T) {
	m := NewMonitor()
	a, b := m.Subscribe(8), m.Subscribe(8)
	m.Publish(SourceVM, "booting")
	m.Publish(SourceVM, "booted", "id", "x", "odd")
	for _, s := range []*Subscription{a, b} {
		e1, e2 := <-s.Events(), <-s.Events()
		if e1.Event != "booting" || e1.Properties != nil || e2.Event != "booted" {
			t.Fatalf("got %+v %+v", e1, e2)
		}
		if e2.Properties["id"] != "x" || e2.Properties["odd"] != "" || len(e2.Properties) != 2 {
			t.Fatalf("properties %v", e2.Properties)
		}
		if e2.Timestamp < e1.Timestamp {
			t.Fatalf("timestamps go back: %v then %v", e1.Timestamp, e2.Timestamp)
		}
	}
	a.Close()
	a.Close()
	if _, ok := <-a.Events(); ok {
		t.Fatal("a closed subscription still delivers")
	}
	if m.Subscribers() != 1 {
		t.Fatalf("%d subscribers after one closed", m.Subscribers())
	}
	m.Publish(SourceVM, "paused")
	if e := <-b.Events(); e.Event != "paused" {
		t.Fatalf("got %+v", e)
	}
	if p, d := m.Stats(); p != 3 || d != 0 {
		t.Fatalf("stats %d published %d dropped", p, d)
	}
}

// A consumer that reads nothing must not stop Publish: the events that
// do not fit are dropped, counted, and announced before the next event
// the consumer gets once it reads again.
func TestStalledSubscriberDropsAndIsTold(t *testing.T) {
	m := NewMonitor()
	s := m.Subscribe(4)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 100 {
			m.Publish(SourceVM, "tick", "n", string(rune('a'+i%26)))
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Publish blocked on a stalled subscriber")
	}
	if s.Dropped() != 96 {
		t.Fatalf("dropped %d, want 96", s.Dropped())
	}
	if _, d := m.Stats(); d != 96 {
		t.Fatalf("monitor dropped %d", d)
	}
	var got []Event
	for range 4 {
		got = append(got, <-s.Events())
	}
	if got[3].Properties["n"] != "d" {
		t.Fatalf("the first four events are not the ones kept: %+v", got)
	}
	m.Publish(SourceVM, "after")
	n, after := <-s.Events(), <-s.Events()
	if n.Source != SourceVio || n.Event != "events-dropped" || n.Properties["count"] != "96" {
		t.Fatalf("no drop notice first: %+v", n)
	}
	if after.Event != "after" {
		t.Fatalf("got %+v after the notice", after)
	}
}

func TestNilMonitorDropsEverything(t *testing.T) {
	var m *Monitor
	m.Publish(SourceVM, "booted")
	s := m.Subscribe(1)
	s.Close()
	if _, ok := <-s.Events(); ok {
		t.Fatal("an event from a nil monitor")
	}
}

func TestSinkWritesJSONLines(t *testing.T) {
	m := NewMonitor()
	var buf bytes.Buffer
	k := NewSink(m, &buf, 0)
	for _, ev := range []string{"booting", "booted", "shutdown"} {
		m.Publish(SourceVM, ev, "reason", "test")
	}
	if err := k.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(&buf)
	var got []string
	for sc.Scan() {
		var e Event
		d := json.NewDecoder(strings.NewReader(sc.Text()))
		d.DisallowUnknownFields()
		if err := d.Decode(&e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, e.Event+"/"+e.Properties["reason"])
	}
	if strings.Join(got, " ") != "booting/test booted/test shutdown/test" {
		t.Fatalf("lines: %v", got)
	}
}

// blockingWriter blocks every Write until release is closed.
type blockingWriter struct {
	release chan struct{}
	mu      sync.Mutex
	n       int
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	w.n++
	w.mu.Unlock()
	return len(p), nil
}

func TestSinkOnStalledWriter(t *testing.T) {
	m := NewMonitor()
	w := &blockingWriter{release: make(chan struct{})}
	k := NewSink(m, w, 2)
	for range 50 {
		m.Publish(SourceVM, "tick")
	}
	// At most the buffer plus the one event in the blocked Write got
	// through; the rest were dropped, and Publish did not wait.
	if d := k.Dropped(); d < 47 {
		t.Fatalf("dropped %d of 50 with a buffer of 2", d)
	}
	if err := k.Close(50 * time.Millisecond); err == nil {
		t.Fatal("Close reported success with the writer stalled")
	}
	close(w.release)
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestSinkReportsWriteErrors(t *testing.T) {
	m := NewMonitor()
	k := NewSink(m, failWriter{}, 0)
	m.Publish(SourceVM, "booted")
	if err := k.Close(5 * time.Second); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("Close: %v", err)
	}
}

func TestParseTarget(t *testing.T) {
	for in, want := range map[string]Target{
		"path=/tmp/ev": {Path: "/tmp/ev", FD: -1},
		"fd=3":         {FD: 3},
		"path=a=b":     {Path: "a=b", FD: -1},
	} {
		got, err := ParseTarget(in)
		if err != nil || got != want {
			t.Errorf("%q: %+v %v, want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "/tmp/ev", "path=", "fd=", "fd=-1", "fd=x", "file=/x", "fd=3,path=x"} {
		if _, err := ParseTarget(in); !errors.Is(err, ErrTarget) {
			t.Errorf("%q accepted (%v)", in, err)
		}
	}
}

func TestTargetOpen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ev")
	os.WriteFile(p, []byte("old content\n"), 0o644)
	f, err := Target{Path: p, FD: -1}.Open()
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if b, _ := os.ReadFile(p); len(b) != 0 {
		t.Fatalf("the file was not truncated: %q", b)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, err := (Target{FD: int(r.Fd())}).Open(); !errors.Is(err, ErrTarget) {
		t.Fatalf("a read-only fd accepted: %v", err)
	}
	if _, err := (Target{FD: 1 << 20}).Open(); !errors.Is(err, ErrTarget) {
		t.Fatalf("a closed fd accepted: %v", err)
	}
	// The target owns the descriptor it opens: give it its own.
	fd, err := syscall.Dup(int(w.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	wf, err := Target{FD: fd}.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer wf.Close()
	m := NewMonitor()
	k := NewSink(m, wf, 0)
	m.Publish(SourceVMM, "starting")
	if err := k.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil || !strings.Contains(line, `"event":"starting"`) {
		t.Fatalf("read %q %v", line, err)
	}
}

func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"path=/x", "fd=3", "fd=", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tg, err := ParseTarget(s)
		if err == nil && (tg.Path == "") == (tg.FD < 0) {
			t.Fatalf("%q gave %+v", s, tg)
		}
	})
}

func FuzzDurationJSON(f *testing.F) {
	f.Add([]byte(`{"secs":1,"nanos":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Duration
		if json.Unmarshal(b, &d) != nil {
			return
		}
		out, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		var again Duration
		if err := json.Unmarshal(out, &again); err != nil || again != d {
			t.Fatalf("%s -> %s -> %v %v", b, out, again, err)
		}
	})
}
