package coalesce

import (
	"errors"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Config
	}{
		{"off", Config{Mode: Off}},
		{"", Config{Mode: Off}},
		{"adaptive", Config{Mode: Adaptive}},
		{"adaptive:200us", Config{Mode: Adaptive, MaxDelay: 200 * time.Microsecond}},
		{"8", Config{Mode: Fixed, Count: 8}},
		{"8:1ms", Config{Mode: Fixed, Count: 8, MaxDelay: time.Millisecond}},
	} {
		got, err := Parse(c.in)
		if err != nil || got != c.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		if c.in != "" {
			if back, err := Parse(got.String()); err != nil || back != got {
				t.Errorf("Parse(%q.String() = %q) = %+v, %v", c.in, got.String(), back, err)
			}
		}
	}
	for _, bad := range []string{"1", "0", "-3", "2000", "sometimes", "adaptive:", "adaptive:-1ms", "adaptive:1h", "8:fast"} {
		if _, err := Parse(bad); !errors.Is(err, ErrConfig) {
			t.Errorf("Parse(%q): %v, want ErrConfig", bad, err)
		}
	}
}

func TestOffInterruptsEveryBatch(t *testing.T) {
	c := New(Config{Mode: Off})
	now := time.Unix(0, 0)
	for i := range 10 {
		if !c.Completed(1+i%3, 32, now) {
			t.Fatalf("batch %d: Off held an interrupt back", i)
		}
		c.Interrupted(now)
	}
	if s := c.Stats(); s.Interrupts != 10 || s.Coalesced != 0 || s.Delay != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestAdaptive: below the depth threshold every completion interrupts at
// once (QD1 never waits); at depth completions gather until a quarter of
// what is outstanding has completed; the last outstanding one never waits.
func TestAdaptive(t *testing.T) {
	c := New(Config{Mode: Adaptive})
	now := time.Unix(0, 0)
	if !c.Completed(1, 0, now) || !c.Completed(1, DefaultMinInFlight-1, now) {
		t.Fatal("a shallow queue's completion was held back")
	}
	c.Interrupted(now)

	// 32 in flight: want (31+1)/4 = 8 completions per interrupt.
	inFlight := 32
	var fired []int
	for i := 1; i <= 16; i++ {
		inFlight--
		now = now.Add(10 * time.Microsecond)
		if c.Completed(1, inFlight, now) {
			fired = append(fired, i)
			c.Interrupted(now)
			inFlight += 8 // the guest refills
		}
	}
	if len(fired) == 0 || fired[0] != 8 {
		t.Errorf("interrupts after completions %v, want the first after 8", fired)
	}
	if c.Pending() && c.Deadline().After(now.Add(DefaultMaxDelay)) {
		t.Errorf("deadline %v is further than MaxDelay from the last push %v", c.Deadline(), now)
	}
	if !c.Completed(1, 0, now) {
		t.Error("the last outstanding completion was held back")
	}
}

// TestDelayAccounting: completions pushed at 0, 10 and 30 us and
// interrupted for at 40 us waited 40+30+10 = 80 us in all; two rode on a
// later batch's interrupt.
func TestDelayAccounting(t *testing.T) {
	c := New(Config{Mode: Fixed, Count: 100, MaxDelay: time.Millisecond})
	t0 := time.Unix(100, 0)
	for _, us := range []int{0, 10, 30} {
		if c.Completed(1, 50, t0.Add(time.Duration(us)*time.Microsecond)) {
			t.Fatal("fixed 100 interrupted after one completion")
		}
	}
	if want := t0.Add(time.Millisecond); !c.Deadline().Equal(want) {
		t.Errorf("deadline %v, want %v", c.Deadline(), want)
	}
	c.Interrupted(t0.Add(40 * time.Microsecond))
	if s := c.Stats(); s.Interrupts != 1 || s.Coalesced != 2 || s.Delay != 80*time.Microsecond {
		t.Errorf("stats %+v, want 1 interrupt, 2 coalesced, 80us", s)
	}
	if c.Pending() {
		t.Error("completions pending after Interrupted")
	}
	c.Interrupted(t0) // nothing pending: no interrupt counted
	if c.Stats().Interrupts != 1 {
		t.Error("Interrupted with nothing pending counted an interrupt")
	}
}

func TestFixed(t *testing.T) {
	c := New(Config{Mode: Fixed, Count: 4})
	now := time.Unix(0, 0)
	n := 0
	for i := 1; i <= 12; i++ {
		if c.Completed(1, 20, now) {
			n++
			if i%4 != 0 {
				t.Errorf("interrupt after completion %d", i)
			}
			c.Interrupted(now)
		}
	}
	if n != 3 {
		t.Errorf("%d interrupts for 12 completions at 4 each", n)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"off", "adaptive:1ms", "16:250us", "x:y", ":"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse(%q) returned an invalid policy: %v", s, err)
		}
		back, err := Parse(c.String())
		if err != nil || back != c {
			t.Fatalf("Parse(%q) = %+v does not round-trip through %q: %+v, %v", s, c, c.String(), back, err)
		}
	})
}
