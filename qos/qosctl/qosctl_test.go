package qosctl_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/qos"
	"github.com/viovmm/vio/qos/mclock"
	"github.com/viovmm/vio/qos/qosctl"
)

func TestParseParams(t *testing.T) {
	def := mclock.Params{Weight: 1}
	for _, c := range []struct {
		spec string
		want mclock.Params
		err  string
	}{
		{"", def, ""},
		{"r=300,w=1", mclock.Params{Reservation: 300, Weight: 1}, ""},
		{"l=200", mclock.Params{Weight: 1, Limit: 200}, ""},
		{"reservation=10, weight=2.5,limit=20", mclock.Params{Reservation: 10, Weight: 2.5, Limit: 20}, ""},
		{"w=0", mclock.Params{}, "weight 0"},
		{"r=30,l=20", mclock.Params{}, "above limit"},
		{"x=1", mclock.Params{}, "unknown key"},
		{"r", mclock.Params{}, "key=value"},
		{"r=fast", mclock.Params{}, "not a number"},
		{"r=-1", mclock.Params{}, "negative"},
		{"l=NaN", mclock.Params{}, "not a number"},
	} {
		got, err := qosctl.ParseParams(c.spec, def)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: error %v, want one saying %q", c.spec, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q: %+v %v, want %+v", c.spec, got, err, c.want)
		}
	}
}

func shared(t testing.TB) *qos.Shared {
	t.Helper()
	s, err := qos.NewShared(blocktest.NewMem(1<<16), qos.Config{Depth: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, n := range []string{"vm1", "vm2"} {
		if err := s.SetClient(n, mclock.Params{Weight: 1}); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// TestControlSocket: stats for all and one client, a set that changes
// the scheduler's parameters, and errors for bad requests, over a real
// socket.
func TestControlSocket(t *testing.T) {
	s := shared(t)
	d, err := s.Disk("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- qosctl.Serve(ctx, l, s) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rd := bufio.NewReader(c)
	ask := func(line string) qosctl.Reply {
		t.Helper()
		if _, err := c.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
		resp, err := rd.ReadBytes('\n')
		if err != nil {
			t.Fatal(err)
		}
		var r qosctl.Reply
		if err := json.Unmarshal(resp, &r); err != nil {
			t.Fatalf("reply %q: %v", resp, err)
		}
		return r
	}
	r := ask(`{"op":"stats"}`)
	if r.Error != "" || len(r.Clients) != 2 || r.Clients[0].Name != "vm1" || r.Clients[0].Requests != 1 || r.Clients[1].Requests != 0 {
		t.Fatalf("stats: %+v", r)
	}
	r = ask(`{"op":"set","client":"vm2","reservation":10,"limit":50}`)
	if r.Error != "" || len(r.Clients) != 1 || r.Clients[0].Limit != 50 || r.Clients[0].Reservation != 10 || r.Clients[0].Weight != 1 {
		t.Fatalf("set: %+v", r)
	}
	if p, _ := s.Params("vm2"); p != (mclock.Params{Reservation: 10, Weight: 1, Limit: 50}) {
		t.Fatalf("scheduler has %+v after set", p)
	}
	for line, want := range map[string]string{
		`{"op":"set","client":"vm2","limit":5}`:  "above limit",
		`{"op":"set","client":"vm3","limit":5}`:  "no client",
		`{"op":"set","limit":5}`:                 "needs a client",
		`{"op":"reboot"}`:                        "unknown op",
		`{"op":"stats","weight":2}`:              "no settings",
		`{"op":"stats","bogus":1}`:               "bad request",
		`not json`:                               "bad request",
		`{"op":"set","client":"vm2","weight":0}`: "weight 0",
	} {
		if r := ask(line); !strings.Contains(r.Error, want) {
			t.Errorf("%s: %+v, want an error saying %q", line, r, want)
		}
	}
	// A refused set changed nothing.
	if p, _ := s.Params("vm2"); p.Limit != 50 || p.Weight != 1 {
		t.Fatalf("a refused set changed the parameters: %+v", p)
	}
	// A line over the bound ends the connection with an error.
	c.Write([]byte(strings.Repeat("x", qosctl.MaxLine+10) + "\n"))
	resp, _ := rd.ReadBytes('\n')
	if !strings.Contains(string(resp), "longer than") {
		t.Fatalf("long line: %q", resp)
	}
	if _, err := rd.ReadBytes('\n'); err == nil {
		t.Fatalf("connection still open after a long line: %v", err)
	}
}

// FuzzHandle: no request line crashes the handler, and every reply is
// one JSON object.
func FuzzHandle(f *testing.F) {
	for _, s := range []string{`{"op":"stats"}`, `{"op":"set","client":"vm1","limit":1e300}`, `{"op":"set","client":"vm1","weight":-0}`, `[]`, `{"op":"stats","client":"\u0000"}`} {
		f.Add([]byte(s))
	}
	s := shared(f)
	f.Fuzz(func(t *testing.T, line []byte) {
		out := qosctl.Handle(s, line)
		var r qosctl.Reply
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("reply %q is not JSON: %v", out, err)
		}
		for _, n := range []string{"vm1", "vm2"} {
			p, err := s.Params(n)
			if err != nil || p.Validate() != nil {
				t.Fatalf("%s left with %+v %v", n, p, err)
			}
		}
	})
}

// FuzzParseParams: any spec gives valid parameters or an error.
func FuzzParseParams(f *testing.F) {
	for _, s := range []string{"r=300,w=1,l=400", "w=2", "l=1e-10", "r=1e13", ",,", "r=0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		p, err := qosctl.ParseParams(spec, mclock.Params{Weight: 1})
		if err == nil && p.Validate() != nil {
			t.Fatalf("%q accepted as %+v", spec, p)
		}
	})
}
