package main

import (
	"strings"
	"testing"
	"time"
)

// guestScript is a stand-in VMM: a shell printing the guest's workload
// markers as the benchmark guest does, then exiting with code.
func guestScript(lines string, code string) []string {
	return []string{"sh", "-c", lines + "exit " + code}
}

// TestRunRoundsGoesOnAfterAFailure: a run that dies keeps the workloads it
// finished, the other setups and rounds still run, and the failure is
// returned for the exit status (session 14: one QEMU run that hung in
// iperf ended a three-round benchmark with no table at all).
func TestRunRoundsGoesOnAfterAFailure(t *testing.T) {
	both := "echo BENCH-BEGIN a; echo BENCH-END a 10 0 1; echo BENCH-BEGIN b; echo BENCH-END b 20 0 2;"
	vmms := []setup{
		{name: "dies", argv: guestScript("echo BENCH-BEGIN a; echo BENCH-END a 11 0 1; echo BENCH-BEGIN b;", "1")},
		{name: "fine", argv: guestScript(both, "0")},
	}
	b := &budget{deadline: time.Now().Add(time.Hour), perRun: time.Minute}
	results, order, ran, err := runRounds(b, vmms, 2, nil)
	if err == nil || !strings.Contains(err.Error(), "dies round 1") || !strings.Contains(err.Error(), "dies round 2") {
		t.Errorf("err = %v, want both failed runs named", err)
	}
	if ran != 2 {
		t.Errorf("ran %d rounds, want 2", ran)
	}
	if strings.Join(order, ",") != "a,b" {
		t.Errorf("order %v, want a,b", order)
	}
	if n := len(results["fine"]["b"]); n != 2 {
		t.Errorf("fine measured b %d times, want 2", n)
	}
	if n := len(results["dies"]["a"]); n != 2 || results["dies"]["a"][0].value != 11 {
		t.Errorf("dies' finished workload: %+v, want 2 results of 11", results["dies"]["a"])
	}
	if n := len(results["dies"]["b"]); n != 0 {
		t.Errorf("dies' unfinished workload has %d results", n)
	}
}

// TestRunRoundsBudget: a spent -timeout stops the rounds and says so.
func TestRunRoundsBudget(t *testing.T) {
	vmms := []setup{{name: "x", argv: guestScript("echo BENCH-BEGIN a; echo BENCH-END a 1 0 0;", "0")}}
	b := &budget{deadline: time.Now().Add(time.Second), perRun: time.Minute}
	_, _, ran, err := runRounds(b, vmms, 3, nil)
	if ran != 0 || err == nil || !strings.Contains(err.Error(), "cut short in round 1") {
		t.Errorf("ran %d, err %v; want no round and a cut", ran, err)
	}
}

// TestWorkloadFailedInGuest: a workload the guest reports failed (an iperf3
// that timed out) fails the run, and the others count.
func TestWorkloadFailedInGuest(t *testing.T) {
	b := &budget{deadline: time.Now().Add(time.Hour), perRun: time.Minute}
	res, names, err := ioOnce(b, guestScript("echo BENCH-BEGIN a; echo BENCH-END a 5 0 1; echo BENCH-BEGIN iperf-tx; echo BENCH-FAIL iperf-tx iperf3: error - unable to connect;", "0"), nil)
	if err == nil || !strings.Contains(err.Error(), "unable to connect") {
		t.Errorf("err = %v, want the guest's reason", err)
	}
	if len(names) != 1 || res["a"].value != 5 {
		t.Errorf("got %v %+v, want workload a's result", names, res)
	}
}
