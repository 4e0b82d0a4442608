package state_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/state"
)

// counter is a tiny component: its state is a number, version 2, and it
// reads version 1 (which stored the number halved).
type counter struct {
	n int
}

type counterState struct{ N int }

func (*counter) StateKind() string    { return "counter" }
func (*counter) StateVersion() uint32 { return 2 }
func (c *counter) MarshalState() ([]byte, error) {
	return state.Marshal(counterState{c.n})
}
func (c *counter) UnmarshalState(v uint32, data []byte) error {
	var s counterState
	if err := state.Unmarshal(data, &s); err != nil {
		return err
	}
	if s.N < 0 {
		return state.ErrInvalid
	}
	if v == 1 {
		s.N *= 2
	}
	c.n = s.N
	return nil
}

type older struct{ counter }

func (*older) StateVersion() uint32 { return 1 }

func encode(t *testing.T, s *state.Snapshot) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := s.Encode(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestRoundTrip(t *testing.T) {
	s := state.New()
	if err := s.Save("a", &counter{7}); err != nil {
		t.Fatal(err)
	}
	if err := s.Save("dev/b", &older{counter{3}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Save("a", &counter{1}); err == nil {
		t.Error("duplicate id accepted")
	}
	if err := s.Save("bad id", &counter{1}); err == nil {
		t.Error("id with a space accepted")
	}
	got, err := state.Decode(bytes.NewReader(encode(t, s)))
	if err != nil {
		t.Fatal(err)
	}
	var a, b counter
	if err := got.Restore("a", &a); err != nil || a.n != 7 {
		t.Fatalf("a: %v, n=%d", err, a.n)
	}
	if u := got.Unrestored(); len(u) != 1 || u[0] != "dev/b" {
		t.Errorf("Unrestored = %v", u)
	}
	// A version-1 section read by a version-2 component is migrated.
	if err := got.Restore("dev/b", &b); err != nil || b.n != 6 {
		t.Fatalf("b: %v, n=%d", err, b.n)
	}
	// A version-2 section is refused by a version-1 component.
	var o older
	err = got.Restore("a", &o)
	if !errors.Is(err, state.ErrNewer) || !strings.Contains(err.Error(), "upgrade vio") {
		t.Errorf("newer section: %v", err)
	}
	if err := got.Restore("missing", &a); !errors.Is(err, state.ErrMismatch) {
		t.Errorf("missing section: %v", err)
	}
}

type other struct{ counter }

func (*other) StateKind() string { return "other" }

func TestKindMismatch(t *testing.T) {
	s := state.New()
	if err := s.Save("x", &counter{1}); err != nil {
		t.Fatal(err)
	}
	err := s.Restore("x", &other{})
	if !errors.Is(err, state.ErrMismatch) {
		t.Fatalf("got %v", err)
	}
}

func TestInvalidStateRefused(t *testing.T) {
	s := state.New()
	if err := s.Save("x", &counter{-1}); err != nil {
		t.Fatal(err)
	}
	c := counter{5}
	if err := s.Restore("x", &c); !errors.Is(err, state.ErrInvalid) || c.n != 5 {
		t.Fatalf("got %v, n=%d", err, c.n)
	}
}

func TestDecodeHostile(t *testing.T) {
	s := state.New()
	if err := s.Save("a", &counter{7}); err != nil {
		t.Fatal(err)
	}
	good := encode(t, s)
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	le := binary.LittleEndian
	cases := []struct {
		name string
		in   []byte
		want error
		text string
	}{
		{"empty", nil, state.ErrCorrupt, "header"},
		{"magic", mod(func(b []byte) []byte { b[0] = 'X'; return b }), state.ErrCorrupt, "magic"},
		{"newer", mod(func(b []byte) []byte { le.PutUint32(b[8:], 3); return b }), state.ErrNewer,
			"snapshot was written by a newer vio (format 3, this vio reads up to 1): upgrade vio"},
		{"version0", mod(func(b []byte) []byte { le.PutUint32(b[8:], 0); return b }), state.ErrCorrupt, "version 0"},
		{"huge", mod(func(b []byte) []byte { le.PutUint32(b[12:], 1<<31); return b }), state.ErrCorrupt, "limit"},
		{"truncated", good[:len(good)-3], state.ErrCorrupt, "body"},
		{"crc", mod(func(b []byte) []byte { b[len(b)-2] ^= 1; return b }), state.ErrCorrupt, "checksum"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := state.Decode(bytes.NewReader(c.in))
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("got %v, want %v containing %q", err, c.want, c.text)
			}
		})
	}
}

// withBody frames an arbitrary body correctly, to reach the body checks.
func withBody(body string) []byte {
	var b bytes.Buffer
	s := state.New()
	_ = s.Encode(&b) // a valid header to patch
	h := b.Bytes()[:state.HeaderSize]
	le := binary.LittleEndian
	le.PutUint32(h[12:], uint32(len(body)))
	le.PutUint32(h[16:], crcC([]byte(body)))
	return append(bytes.Clone(h), body...)
}

func TestDecodeHostileBody(t *testing.T) {
	for _, body := range []string{
		`{"sections":[{"id":"a","kind":"k","version":1,"data":1},{"id":"a","kind":"k","version":1,"data":2}]}`,
		`{"sections":[{"id":"","kind":"k","version":1,"data":1}]}`,
		`{"sections":[{"id":"a b","kind":"k","version":1,"data":1}]}`,
		`{"sections":[{"id":"a","kind":"","version":1,"data":1}]}`,
		`{"sections":[{"id":"a","kind":"k","version":1}]}`,
		`{"sections":[],"extra":1}`,
		`{"sections":[]} {}`,
		`[`,
	} {
		if _, err := state.Decode(bytes.NewReader(withBody(body))); !errors.Is(err, state.ErrCorrupt) {
			t.Errorf("%s: got %v", body, err)
		}
	}
	s, err := state.Decode(bytes.NewReader(withBody(`{"sections":[{"id":"a","kind":"counter","version":0,"data":{"N":1}}]}`)))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Restore("a", &counter{}); !errors.Is(err, state.ErrCorrupt) {
		t.Errorf("version 0 section: %v", err)
	}
}

func TestUnmarshalStrict(t *testing.T) {
	var s counterState
	for _, in := range []string{`{"N":1,"M":2}`, `{"N":1}{}`, `{"N":"x"}`, ``} {
		if err := state.Unmarshal([]byte(in), &s); !errors.Is(err, state.ErrCorrupt) {
			t.Errorf("%q: %v", in, err)
		}
	}
}

// FuzzDecode: whatever the bytes, Decode returns a snapshot or an error
// and never panics; a snapshot it returns re-encodes and decodes to the
// same sections.
func FuzzDecode(f *testing.F) {
	s := state.New()
	_ = s.Save("a", &counter{7})
	var b bytes.Buffer
	_ = s.Encode(&b)
	f.Add(b.Bytes())
	f.Add(withBody(`{"sections":[{"id":"a","kind":"k","version":1,"data":{}}]}`))
	f.Add([]byte("VIOSTATE"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := state.Decode(bytes.NewReader(data))
		if err != nil {
			return
		}
		var b bytes.Buffer
		if err := s.Encode(&b); err != nil {
			t.Fatal(err)
		}
		s2, err := state.Decode(&b)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if len(s2.Sections()) != len(s.Sections()) {
			t.Fatal("sections lost in re-encoding")
		}
		for _, sec := range s.Sections() {
			_ = s.Restore(sec.ID, &counter{})
		}
	})
}

func TestGate(t *testing.T) {
	g := state.NewGate()
	stop := make(chan struct{})
	work := make(chan int)
	took := make(chan int, 10)
	g.Join()
	go func() {
		defer g.Leave()
		for {
			select {
			case <-stop:
				return
			case <-g.Requested():
				if !g.Park(stop) {
					return
				}
			case v := <-work:
				took <- v
			}
		}
	}()
	work <- 1
	if err := g.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case work <- 2:
		t.Fatal("a parked goroutine took work")
	case <-time.After(20 * time.Millisecond):
		// Absence of an event can only be observed over a window; this
		// one bounds the test, it does not synchronise it.
	}
	g.Resume()
	work <- 3
	if a, b := <-took, <-took; a != 1 || b != 3 {
		t.Fatalf("took %d, %d", a, b)
	}
	// A pause that cannot complete (a goroutine that never parks) ends
	// with the context and resumes.
	g.Join()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := g.Pause(ctx); !errors.Is(err, context.DeadlineExceeded) || g.Paused() {
		t.Fatalf("got %v, paused=%v", err, g.Paused())
	}
	g.Leave()
	close(stop)
}

func TestSaveLoad(t *testing.T) {
	type S struct{ N int }
	data, err := state.Save(S{N: 7}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := state.Save(S{}, errors.New("busy")); err == nil || err.Error() != "busy" {
		t.Errorf("Save passed over its error: %v", err)
	}
	var got S
	keep := func(s S) error { got = s; return nil }
	if err := state.Load(1, 1, data, keep); err != nil || got.N != 7 {
		t.Errorf("Load: %+v, %v", got, err)
	}
	if err := state.Load(2, 1, data, keep); !errors.Is(err, state.ErrNewer) {
		t.Errorf("a newer version: %v", err)
	}
	if err := state.Load(0, 1, data, keep); !errors.Is(err, state.ErrCorrupt) {
		t.Errorf("version 0: %v", err)
	}
	if err := state.Load(1, 1, []byte(`{"N":1,"M":2}`), keep); !errors.Is(err, state.ErrCorrupt) {
		t.Errorf("an unknown field: %v", err)
	}
}
