package ringpoll

import (
	"errors"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for s, want := range map[string]Config{
		"":                {},
		"off":             {},
		"adaptive":        {Mode: Adaptive},
		"on":              {Mode: Adaptive},
		"adaptive:100us":  {Mode: Adaptive, Window: 100 * time.Microsecond},
		"adaptive:200":    {Mode: Adaptive, Window: 200 * time.Microsecond},
		"50":              {Mode: Fixed, Window: 50 * time.Microsecond},
		"50us":            {Mode: Fixed, Window: 50 * time.Microsecond},
		"1000":            {Mode: Fixed, Window: time.Millisecond},
		"1ms":             {Mode: Fixed, Window: time.Millisecond},
		"adaptive:1500ns": {Mode: Adaptive, Window: 1500 * time.Nanosecond},
	} {
		got, err := Parse(s)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", s, got, err, want)
		}
		if err == nil && s != "" {
			back, err := Parse(got.String())
			if err != nil || back != got {
				t.Errorf("Parse(%q.String() = %q) = %+v, %v", s, got.String(), back, err)
			}
		}
	}
	for _, s := range []string{"0", "-5", "1001", "2ms", "off:5", "adaptive:", "adaptive:0", "adaptive:5s", "fast", "5x", "1e3"} {
		if c, err := Parse(s); !errors.Is(err, ErrConfig) {
			t.Errorf("Parse(%q) = %+v, %v; want ErrConfig", s, c, err)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []Config{{Mode: 7}, {Mode: Fixed}, {Mode: Adaptive, Window: 2 * MaxWindow}, {Mode: Adaptive, Window: -1}} {
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("Validate(%+v) = %v", c, err)
		}
	}
}

func TestOffAndFixed(t *testing.T) {
	w := New(Config{})
	w.Woke(time.Microsecond)
	if w.Next() != 0 {
		t.Fatalf("off polls for %v", w.Next())
	}
	w = New(Config{Mode: Fixed, Window: 30 * time.Microsecond})
	for _, d := range []time.Duration{time.Microsecond, time.Second} {
		w.Woke(d)
		if w.Next() != 30*time.Microsecond {
			t.Fatalf("fixed window moved to %v after work at %v", w.Next(), d)
		}
	}
}

// The adaptive window starts at nothing, grows while work comes soon
// after the device gave up, stops growing at its bound, and drops to
// nothing when work comes later than the bound.
func TestAdaptive(t *testing.T) {
	w := New(Config{Mode: Adaptive})
	if w.Next() != 0 {
		t.Fatalf("a fresh window polls for %v", w.Next())
	}
	w.Woke(time.Millisecond) // an idle guest: still nothing
	if w.Next() != 0 {
		t.Fatalf("idle work grew the window to %v", w.Next())
	}
	want := []time.Duration{4, 8, 16, 32, 64, 64}
	for i, d := range want {
		w.Woke(min(w.Next()+10*time.Microsecond, DefaultMax)) // too late, within the bound
		if w.Next() != d*time.Microsecond {
			t.Fatalf("step %d: window %v, want %v", i, w.Next(), d*time.Microsecond)
		}
	}
	w.Woke(30 * time.Microsecond) // caught by the window: no change
	if w.Next() != DefaultMax {
		t.Fatalf("work within the window moved it to %v", w.Next())
	}
	w.Woke(DefaultMax + time.Microsecond)
	if w.Next() != 0 {
		t.Fatalf("work after the bound left the window at %v", w.Next())
	}
}
