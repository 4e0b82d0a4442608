package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/qos/mclock"
	"github.com/viovmm/vio/qos/qosctl"
)

func TestParseServedSockets(t *testing.T) {
	f := qosFlags{depth: 16}
	socks, on, err := parseServedSockets([]string{"/a.sock"}, f)
	if err != nil || on || len(socks) != 1 || socks[0].params != (mclock.Params{Weight: 1}) {
		t.Fatalf("one plain socket: %+v %v %v", socks, on, err)
	}
	f.def = "r=10,w=3"
	socks, on, err = parseServedSockets([]string{"/a.sock", "/b.sock,name=vm2,w=1,l=50"}, f)
	if err != nil || !on || socks[0].params != (mclock.Params{Reservation: 10, Weight: 3}) ||
		socks[1].name != "vm2" || socks[1].params != (mclock.Params{Reservation: 10, Weight: 1, Limit: 50}) {
		t.Fatalf("two sockets: %+v %v %v", socks, on, err)
	}
	for _, c := range []struct {
		args []string
		def  string
		want string
	}{
		{nil, "", "--socket PATH is required"},
		{[]string{"/a,r=5,l=1"}, "", "above limit"},
		{[]string{"/a", "/a"}, "", "given twice"},
		{[]string{"/a,name=x", "/b,name=x"}, "", "name x is taken"},
		{[]string{",r=1"}, "", "path comes first"},
		{[]string{"/a,name="}, "", "name= needs a name"},
		{[]string{"/a"}, "w=0", "--qos-default"},
		{[]string{"/a,speed=9"}, "", "unknown key"},
	} {
		_, _, err := parseServedSockets(c.args, qosFlags{def: c.def, depth: 1})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q (default %q): %v, want an error saying %q", c.args, c.def, err, c.want)
		}
	}
	if _, _, err := parseServedSockets([]string{"/a"}, qosFlags{depth: 0}); err == nil || !strings.Contains(err.Error(), "--qos-depth") {
		t.Errorf("depth 0: %v", err)
	}
}

// TestServeDiskQoSControl runs serve-disk with two sockets and a control
// socket, reads both clients' settings there and changes one.
func TestServeDiskQoSControl(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	ctl := filepath.Join(dir, "qos.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := serveDiskCommand()
	var out bytes.Buffer
	c.SetOut(&out)
	c.SetErr(&out)
	c.SetArgs([]string{"--disk", "path=" + img + ",format=raw", "--qos-default", "w=1,l=100",
		"--socket", filepath.Join(dir, "vm1.sock") + ",name=vm1,r=30", "--socket", filepath.Join(dir, "vm2.sock") + ",name=vm2,w=2",
		"--control", ctl})
	done := make(chan error, 1)
	go func() { done <- c.ExecuteContext(ctx) }()
	var conn net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		var err error
		if conn, err = net.Dial("unix", ctl); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve-disk exited: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no control socket: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // polling for the socket to appear
	}
	defer conn.Close()
	rd := bufio.NewReader(conn)
	ask := func(line string) qosctl.Reply {
		t.Helper()
		conn.Write([]byte(line + "\n"))
		b, err := rd.ReadBytes('\n')
		if err != nil {
			t.Fatal(err)
		}
		var r qosctl.Reply
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := ask(`{"op":"stats"}`)
	if len(r.Clients) != 2 || r.Clients[0].Name != "vm1" || r.Clients[0].Reservation != 30 || r.Clients[0].Limit != 100 ||
		r.Clients[1].Name != "vm2" || r.Clients[1].Weight != 2 {
		t.Fatalf("stats: %+v", r)
	}
	if r := ask(`{"op":"set","client":"vm2","limit":0}`); r.Error != "" || r.Clients[0].Limit != 0 {
		t.Fatalf("set: %+v", r)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve-disk: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "with QoS") {
		t.Fatalf("start line:\n%s", out.String())
	}
	for _, p := range []string{ctl, filepath.Join(dir, "vm1.sock")} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
}
