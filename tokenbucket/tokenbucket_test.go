package tokenbucket_test

import (
	"testing"
	"time"

	"github.com/viovmm/vio/tokenbucket"
)

func TestPolicesToTheRate(t *testing.T) {
	t0 := time.Unix(1000, 0)
	// 1000 tokens a second, bursts of 100.
	b := tokenbucket.New(tokenbucket.PerSecond(1000, 100), t0)
	allowed := int64(0)
	// Offer 10 tokens every millisecond (10x the rate) for 10 s of
	// simulated time.
	for ms := range 10000 {
		if b.Allow(10, t0.Add(time.Duration(ms)*time.Millisecond)) {
			allowed += 10
		}
	}
	// 10 s at 1000/s plus the initial burst, within one request.
	if want := int64(10000 + 100); allowed < want-10 || allowed > want+10 {
		t.Fatalf("allowed %d tokens in 10 s, want about %d", allowed, want)
	}
}

func TestBurstAndOversize(t *testing.T) {
	t0 := time.Unix(0, 0)
	b := tokenbucket.New(tokenbucket.Config{Size: 100, RefillTime: time.Second}, t0)
	if !b.Allow(100, t0) {
		t.Fatal("a full bucket refused its size")
	}
	if b.Allow(1, t0) {
		t.Fatal("an empty bucket allowed a token")
	}
	if b.Allow(1, t0.Add(-time.Hour)) {
		t.Fatal("time going backwards refilled the bucket")
	}
	if !b.Allow(500, t0.Add(time.Second)) {
		t.Fatal("an oversized request was refused by a full bucket")
	}
	if b.Allow(1, t0.Add(time.Second)) {
		t.Fatal("an oversized request left tokens")
	}
	if b.Allow(60, t0.Add(time.Second+500*time.Millisecond)) {
		t.Fatal("half a refill allowed 60 of 100")
	}
	if !b.Allow(50, t0.Add(time.Second+500*time.Millisecond)) {
		t.Fatal("half a refill refused 50 of 100")
	}
}

func TestUnlimitedAndValidate(t *testing.T) {
	var b tokenbucket.Bucket
	if !b.Allow(1<<40, time.Now()) {
		t.Fatal("the zero bucket limited")
	}
	if tokenbucket.PerSecond(0, 10).Limited() {
		t.Fatal("rate 0 limits")
	}
	for _, c := range []tokenbucket.Config{{Size: -1}, {Size: 5}} {
		if c.Validate() == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}
