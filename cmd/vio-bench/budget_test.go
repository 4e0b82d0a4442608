package main

import (
	"testing"
	"time"
)

func TestBudget(t *testing.T) {
	b := &budget{deadline: time.Now().Add(time.Hour), perRun: 6 * time.Minute}
	ctx, cancel, err := b.next()
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	if d, _ := ctx.Deadline(); time.Until(d) > 6*time.Minute {
		t.Errorf("a run got %v, more than its 6m share", time.Until(d))
	}
	b.deadline = time.Now().Add(3 * time.Minute)
	ctx2, cancel2, err := b.next()
	if err != nil {
		t.Fatal(err)
	}
	defer cancel2()
	if d, _ := ctx2.Deadline(); time.Until(d) > 3*time.Minute {
		t.Errorf("a run got %v, past the benchmark's deadline", time.Until(d))
	}
	b.deadline = time.Now().Add(time.Minute)
	if _, _, err := b.next(); err == nil {
		t.Error("a run started with a quarter of its share left")
	}
}

func TestMedian(t *testing.T) {
	if got := median(nil); got.value != 0 || got.exits != 0 || got.trace != nil {
		t.Errorf("median of nothing: %+v", got)
	}
	xs := []ioResult{{value: 3}, {value: 1}, {value: 2}}
	if got := median(xs); got.value != 2 {
		t.Errorf("median %v, want 2", got.value)
	}
	if xs[0].value != 3 {
		t.Error("median reordered the caller's rounds")
	}
}
