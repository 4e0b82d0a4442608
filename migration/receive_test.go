package migration_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/viovmm/vio/migration"
	"github.com/viovmm/vio/migration/migrationtest"
	"github.com/viovmm/vio/state"
)

// stream builds a migration stream by hand.
type stream struct{ bytes.Buffer }

func (s *stream) u16(v uint16) *stream { s.Write(binary.LittleEndian.AppendUint16(nil, v)); return s }
func (s *stream) u32(v uint32) *stream { s.Write(binary.LittleEndian.AppendUint32(nil, v)); return s }
func (s *stream) u64(v uint64) *stream { s.Write(binary.LittleEndian.AppendUint64(nil, v)); return s }

func (s *stream) header() *stream {
	s.WriteString(migration.Magic)
	return s.u32(migration.Version).u32(0)
}

func (s *stream) record(typ uint16, length uint32) *stream { return s.u16(typ).u16(0).u32(length) }

func (s *stream) config(c string) *stream {
	s.record(1, uint32(len(c)))
	s.WriteString(c)
	return s
}

// layout describes testTarget's RAM: 8 pages at 0, 4 pages after.
func (s *stream) layout() *stream {
	return s.record(2, 32).u64(0).u64(8 * page).u64(8 * page).u64(4 * page)
}

func (s *stream) data(region uint32, p uint64, fill ...byte) *stream {
	s.record(3, uint32(16+len(fill)*page)).u32(region).u32(0).u64(p)
	for _, b := range fill {
		s.Write(bytes.Repeat([]byte{b}, page))
	}
	return s
}

func (s *stream) zero(region uint32, p, n uint64) *stream {
	return s.record(4, 24).u32(region).u32(0).u64(p).u64(n)
}

func (s *stream) iteration(n uint32, dirty uint64) *stream {
	return s.record(5, 16).u32(n).u32(0).u64(dirty)
}

func (s *stream) state() *stream {
	snap := state.New()
	if err := snap.Save("blob", &migrationtest.Blob{Data: "x"}); err != nil {
		panic(err)
	}
	var b bytes.Buffer
	snap.Encode(&b)
	s.record(6, uint32(b.Len()))
	s.Write(b.Bytes())
	return s
}

func (s *stream) done() *stream { return s.record(7, 0) }

// good is a valid stream up to the first page.
func good() *stream { return new(stream).header().config(`{}`).layout() }

// rw is a connection whose reads come from a byte stream and whose
// writes (the replies) are kept.
type rw struct {
	io.Reader
	out bytes.Buffer
}

func (c *rw) Write(b []byte) (int, error) { return c.out.Write(b) }

func receive(b []byte) (*migration.Received, *migrationtest.Target, *rw, error) {
	tgt := &migrationtest.Target{Sizes: []int{8 * page, 4 * page}}
	c := &rw{Reader: bytes.NewReader(b)}
	rec, err := migration.Receive(context.Background(), c, tgt, migration.ReceiveOptions{})
	return rec, tgt, c, err
}

func TestReceiveStream(t *testing.T) {
	s := good().data(0, 2, 1, 2).data(1, 3, 9).iteration(1, 3).
		zero(0, 3, 5). // clears page 3, skips the untouched 4-7
		data(0, 7, 7).iteration(2, 6).state().done()
	rec, tgt, c, err := receive(s.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	ram := tgt.Built[0].Regions
	want := make([]byte, 8*page)
	copy(want[2*page:], bytes.Repeat([]byte{1}, page))
	copy(want[7*page:], bytes.Repeat([]byte{7}, page))
	if !bytes.Equal(ram[0].Data, want) {
		t.Error("region 0 is not what the stream wrote")
	}
	if ram[1].Data[3*page] != 9 || ram[1].Data[3*page-1] != 0 {
		t.Error("region 1 is not what the stream wrote")
	}
	if !tgt.Built[0].Restored || rec.Stats.Iterations != 2 || rec.Stats.DataPages != 4 || rec.Stats.ZeroPages != 5 {
		t.Errorf("restored %v, stats %+v", tgt.Built[0].Restored, rec.Stats)
	}
	if c.out.Len() != 8 { // the "ready" reply only; Finish sends the last
		t.Errorf("replies %x", c.out.Bytes())
	}
}

// Every bad stream ends in an ErrProtocol error (or the target's own),
// the VM discarded and a failure reply with the reason.
func TestReceiveHostile(t *testing.T) {
	big := uint64(1) << 63
	for _, tc := range []struct {
		name string
		s    *stream
		want string
	}{
		{"empty", new(stream), "header"},
		{"magic", new(stream).u64(1).u64(1), "bad magic"},
		{"version", func() *stream { s := new(stream); s.WriteString(migration.Magic); return s.u32(99).u32(0) }(), "stream version 99"},
		{"flags", func() *stream {
			s := new(stream)
			s.WriteString(migration.Magic)
			return s.u32(migration.Version).u32(4)
		}(), "flags"},
		{"no config", new(stream).header().layout(), "layout record where a config record belongs"},
		{"config too big", new(stream).header().record(1, 2<<20), "config record of 2097152 bytes"},
		{"config truncated", new(stream).header().record(1, 100), "unexpected EOF"},
		{"config not json", new(stream).header().config(`nope`), "does not parse"},
		{"reserved", new(stream).header().u16(1).u16(1).u32(2), "reserved"},
		{"unknown record", good().record(99, 0), "unknown record type 99"},
		{"layout count", new(stream).header().config(`{}`).record(2, 16).u64(0).u64(8 * page), "1 RAM regions, this VM 2"},
		{"layout size", new(stream).header().config(`{}`).record(2, 32).u64(0).u64(8 * page).u64(8 * page).u64(5 * page), "region 1 is"},
		{"layout odd", new(stream).header().config(`{}`).record(2, 20), "layout record of 20 bytes"},
		{"layout huge", new(stream).header().config(`{}`).record(2, 16*65), "layout record"},
		{"region", good().data(2, 0, 1), "region 2"},
		{"page past end", good().data(0, 8, 1), "pages 8+1 of region 0"},
		{"run past end", good().data(1, 3, 1, 1), "pages 3+2 of region 1"},
		{"page overflow", good().zero(0, big, big), "of region 0"},
		{"zero run past end", good().zero(0, 1, 8), "pages 1+8"},
		{"zero count 0", good().zero(0, 1, 0), "pages 1+0"},
		{"data not pages", good().record(3, 16+100), "data record of 116 bytes"},
		{"data too long", good().record(3, 16+257*page), "data record"},
		{"data truncated", good().record(3, 16+page).u32(0).u32(0).u64(0).u64(5), "unexpected EOF"},
		{"data reserved", good().record(3, 16+page).u32(0).u32(1).u64(0), "reserved"},
		{"iteration order", good().iteration(2, 0), "iteration 2 after 0"},
		{"iteration length", good().record(5, 8), "iteration record of 8 bytes"},
		{"config again", good().config(`{}`), "config record after the layout"},
		{"done without state", good().done(), "done before the device state"},
		{"pages after state", good().state().data(0, 0, 1), "RAM after the device state"},
		{"two states", good().state().state(), "a second state record"},
		{"state garbage", good().record(6, 4).u32(7), "device state"},
		{"state too big", good().record(6, 100<<20), "state record of"},
		{"done with payload", good().state().record(7, 1), "done record of 1 bytes"},
		{"ends early", good().data(0, 0, 1), "unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, tgt, c, err := receive(tc.s.Bytes())
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if tc.name != "config not json" && !errors.Is(err, migration.ErrProtocol) {
				t.Errorf("error %v is not ErrProtocol", err)
			}
			for _, in := range tgt.Built {
				if !in.Discarded || in.Restored {
					t.Error("the VM of a bad stream was kept")
				}
			}
			// The last reply is the failure, with the reason.
			out := c.out.Bytes()
			if len(out) >= 8 && binary.LittleEndian.Uint32(out) == 0 && binary.LittleEndian.Uint32(out[4:]) == 0 {
				out = out[8:] // the "ready" reply
			}
			if len(out) < 8 || binary.LittleEndian.Uint32(out) != 1 || !strings.Contains(string(out[8:]), tc.want) {
				t.Errorf("reply %q", out)
			}
		})
	}
}

// A source that is not one: a peer sending a fake failure reply or
// garbage instead of an answer is an error, not a hang or a panic.
func TestSendHostileReply(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply []byte
		want  error
	}{
		{"refusal", append(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 1), 3), "no!"...), migration.ErrDestination},
		{"huge", binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 1), 1<<30), migration.ErrProtocol},
		{"status", binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 5), 0), migration.ErrProtocol},
		{"ok with text", append(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 0), 1), 'x'), migration.ErrProtocol},
		{"nothing", nil, migration.ErrProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := migrationtest.NewSource(page)
			c := &rw{Reader: bytes.NewReader(tc.reply)}
			_, err := migration.Send(context.Background(), c, src, migration.Options{})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Send: %v, want %v", err, tc.want)
			}
			if len(src.Calls()) != 0 {
				t.Errorf("the source was touched: %v", src.Calls())
			}
		})
	}
}

func TestParseURL(t *testing.T) {
	for raw, want := range map[string]string{
		"tcp:127.0.0.1:6000": "tcp:127.0.0.1:6000",
		"tcp:[::1]:6000":     "tcp:[::1]:6000",
		"tcp:host.example:1": "tcp:host.example:1",
		"unix:/run/m.sock":   "unix:/run/m.sock",
		"unix:///run/m.sock": "unix:/run/m.sock",
		"tcp:6000":           "",
		"tcp:host:":          "",
		"unix:":              "",
		"file:///x":          "",
		"/run/m.sock":        "",
		"tcp://host:6000":    "",
	} {
		e, err := migration.ParseURL(raw)
		switch {
		case want == "" && err == nil:
			t.Errorf("ParseURL(%q) = %v, want an error", raw, e)
		case want == "" && !errors.Is(err, migration.ErrBadURL):
			t.Errorf("ParseURL(%q): %v is not ErrBadURL", raw, err)
		case want != "" && (err != nil || e.String() != want):
			t.Errorf("ParseURL(%q) = %v, %v; want %s", raw, e, err, want)
		}
	}
}
