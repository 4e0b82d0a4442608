package faults_test

import (
	"bytes"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/faults"
)

func TestConformanceWithoutRules(t *testing.T) {
	blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
		return faults.New(blocktest.NewMem(size), 1)
	})
}

// A rule that never matches must not change anything either.
func TestConformanceWithIdleRule(t *testing.T) {
	blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
		b := faults.New(blocktest.NewMem(size), 1)
		if err := faults.Of(b).AddRule(faults.Rule{Ops: faults.Flush, Nth: 1 << 60}); err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func setup(t *testing.T, rules ...faults.Rule) (block.Backend, *faults.Node, *blocktest.Mem) {
	t.Helper()
	m := blocktest.NewMem(1 << 20)
	b := faults.New(m, 42)
	t.Cleanup(func() { b.Close() })
	if err := faults.Of(b).SetRules(rules); err != nil {
		t.Fatal(err)
	}
	return b, faults.Of(b), m
}

func read(b block.Backend, off, n int64) error {
	_, err := b.ReadAt(make([]byte, n), off)
	return err
}

func write(b block.Backend, off, n int64) error {
	_, err := b.WriteAt(bytes.Repeat([]byte{0xab}, int(n)), off)
	return err
}

func TestRangeError(t *testing.T) {
	b, _, _ := setup(t, faults.Rule{Offset: 4096, Length: 4096, Errno: syscall.ENOSPC})
	for _, c := range []struct {
		off, n int64
		fail   bool
	}{
		{0, 4096, false},
		{0, 4097, true}, // one byte into the range
		{4096, 512, true},
		{8191, 1, true},
		{8192, 4096, false},
		{0, 1 << 20, true},
	} {
		for _, op := range []func(block.Backend, int64, int64) error{read, write} {
			err := op(b, c.off, c.n)
			if c.fail != (err != nil) {
				t.Errorf("%d bytes at %d: %v, want failure %v", c.n, c.off, err, c.fail)
			}
			if c.fail && !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("%d bytes at %d: %v, want ENOSPC", c.n, c.off, err)
			}
		}
	}
	if err := b.Flush(); err != nil {
		t.Errorf("flush hit by a read/write rule: %v", err)
	}
}

func TestScope(t *testing.T) {
	b, _, m := setup(t, faults.Rule{Ops: faults.Write})
	if err := read(b, 0, 512); err != nil {
		t.Fatalf("read under a write-only rule: %v", err)
	}
	if err := write(b, 0, 512); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write under a write-only rule: %v, want EIO", err)
	}
	if m.Bytes()[0] != 0 {
		t.Fatal("a failed write reached the child")
	}
	b, _, _ = setup(t, faults.Rule{Ops: faults.Read})
	if err := write(b, 0, 512); err != nil {
		t.Fatalf("write under a read-only rule: %v", err)
	}
	if err := read(b, 0, 512); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read under a read-only rule: %v, want EIO", err)
	}
	b, _, _ = setup(t, faults.Rule{Ops: faults.Flush})
	if err := b.Flush(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("flush under a flush rule: %v", err)
	}
	b, _, _ = setup(t, faults.Rule{Ops: faults.Discard, Offset: 0, Length: 512})
	if err := b.(block.Discarder).Discard(0, 4096); !errors.Is(err, syscall.EIO) {
		t.Fatalf("discard under a discard rule: %v", err)
	}
	if err := b.(block.ZeroWriter).WriteZeroes(512, 4096, false); err != nil {
		t.Fatalf("write zeroes outside the rule's range: %v", err)
	}
}

func TestNthAndTimes(t *testing.T) {
	b, n, _ := setup(t, faults.Rule{Name: "third", Nth: 3})
	for i := 1; i <= 6; i++ {
		err := read(b, 0, 512)
		if (i == 3) != (err != nil) {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if st := n.Rules()[0]; st.Seen != 6 || st.Hits != 1 {
		t.Fatalf("counters %+v", st)
	}
	b, _, _ = setup(t, faults.Rule{Times: 2})
	var fails int
	for range 5 {
		if read(b, 0, 512) != nil {
			fails++
		}
	}
	if fails != 2 {
		t.Fatalf("%d failures, want 2", fails)
	}
}

func TestProbabilityIsSeeded(t *testing.T) {
	pattern := func() string {
		b, _, _ := setup(t, faults.Rule{Probability: 0.3})
		var s strings.Builder
		for range 400 {
			if read(b, 0, 1) != nil {
				s.WriteByte('x')
			} else {
				s.WriteByte('.')
			}
		}
		return s.String()
	}
	a, c := pattern(), pattern()
	if a != c {
		t.Fatal("the same seed gave different fault patterns")
	}
	if k := strings.Count(a, "x"); k < 80 || k > 160 {
		t.Fatalf("%d of 400 failed at p=0.3", k)
	}
}

func TestTornWrite(t *testing.T) {
	b, _, m := setup(t, faults.Rule{Torn: 1536})
	p := bytes.Repeat([]byte{0xcd}, 4096)
	n, err := b.WriteAt(p, 8192)
	if !errors.Is(err, syscall.EIO) || n != 1536 {
		t.Fatalf("torn write: %d, %v; want 1536, EIO", n, err)
	}
	got := m.Bytes()[8192 : 8192+4096]
	if !bytes.Equal(got[:1536], p[:1536]) || !bytes.Equal(got[1536:], make([]byte, 4096-1536)) {
		t.Fatal("the child does not hold exactly the prefix")
	}
	// Vectored, the prefix crosses buffers.
	b, _, m = setup(t, faults.Rule{Torn: 700})
	bufs := [][]byte{bytes.Repeat([]byte{1}, 512), bytes.Repeat([]byte{2}, 512)}
	if n, err := block.WritevAt(b, bufs, 0); n != 700 || err == nil {
		t.Fatalf("torn writev: %d, %v", n, err)
	}
	got = m.Bytes()[:1024]
	if got[511] != 1 || got[699] != 2 || got[700] != 0 {
		t.Fatal("torn writev wrote the wrong prefix")
	}
	// Reads are not torn, and a rule may not say so.
	if err := faults.Of(b).AddRule(faults.Rule{Ops: faults.Read, Torn: 10}); err == nil {
		t.Fatal("a torn rule for reads was accepted")
	}
}

func TestFailStop(t *testing.T) {
	b, n, m := setup(t, faults.Rule{Ops: faults.Write, Nth: 2, FailStop: true})
	if err := write(b, 0, 512); err != nil {
		t.Fatal(err)
	}
	if err := write(b, 512, 512); !errors.Is(err, faults.ErrStopped) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("the fail-stopping write: %v", err)
	}
	for _, f := range []func() error{
		func() error { return read(b, 0, 512) },
		func() error { return b.Flush() },
		func() error { return b.(block.Discarder).Discard(0, 512) },
		func() error { return b.(block.Resizer).Resize(1 << 21) },
	} {
		if err := f(); !errors.Is(err, faults.ErrStopped) {
			t.Fatalf("after fail-stop: %v", err)
		}
	}
	if m.Bytes()[512] != 0 {
		t.Fatal("the fail-stopping write reached the child")
	}
	n.Restart()
	if err := read(b, 0, 512); err != nil {
		t.Fatalf("after Restart: %v", err)
	}
}

func TestDelay(t *testing.T) {
	b, _, _ := setup(t, faults.Rule{Delay: 30 * time.Millisecond})
	start := time.Now()
	if err := read(b, 0, 512); err != nil {
		t.Fatalf("a delay-only rule failed the request: %v", err)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Fatalf("request took %v, want at least the 30ms delay", d)
	}
	// Close cuts a long delay short.
	b, _, _ = setup(t, faults.Rule{Delay: time.Hour})
	done := make(chan error)
	go func() { done <- read(b, 0, 512) }()
	// The read may not have reached its delay yet; Close either way makes
	// it fail with ErrClosed rather than wait an hour.
	b.Close()
	if err := <-done; !errors.Is(err, block.ErrClosed) {
		t.Fatalf("delayed read after Close: %v", err)
	}
}

func TestRuntimeChanges(t *testing.T) {
	b, n, _ := setup(t)
	if err := read(b, 0, 512); err != nil {
		t.Fatal(err)
	}
	if err := n.AddRule(faults.Rule{Name: "r", Errno: syscall.ENOSPC}); err != nil {
		t.Fatal(err)
	}
	if err := n.AddRule(faults.Rule{Name: "r"}); err == nil {
		t.Fatal("a second rule named r was accepted")
	}
	if err := read(b, 0, 512); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("after AddRule: %v", err)
	}
	if !n.RemoveRule("r") || n.RemoveRule("r") {
		t.Fatal("RemoveRule")
	}
	if err := read(b, 0, 512); err != nil {
		t.Fatalf("after RemoveRule: %v", err)
	}
}

func TestRuleValidation(t *testing.T) {
	for _, c := range []struct {
		r    faults.Rule
		want string
	}{
		{faults.Rule{Offset: -1}, "negative"},
		{faults.Rule{Probability: 1.5}, "probability"},
		{faults.Rule{Delay: 2 * time.Second, DelayMax: time.Second}, "below the minimum"},
		{faults.Rule{Torn: 10, FailStop: true, Ops: faults.Write}, "not both"},
		{faults.Rule{Ops: 1 << 6}, "unknown request kind"},
	} {
		_, n, _ := setup(t)
		err := n.AddRule(c.r)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error about %q", c.r, err, c.want)
		}
	}
	if _, err := faults.ParseErrno("EWHAT"); err == nil {
		t.Error("ParseErrno accepted EWHAT")
	}
	if o, err := faults.ParseOps("read+flush"); err != nil || o != faults.Read|faults.Flush {
		t.Errorf("ParseOps: %v %v", o, err)
	}
}
