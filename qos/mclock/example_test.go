package mclock_test

import (
	"fmt"
	"time"

	"github.com/viovmm/vio/qos/mclock"
)

// A device that serves one request a millisecond, shared by a client
// reserving 250 IOPS and three clients of weights 1, 1 and 3 (the first
// is the reserving one). Over one simulated second the reservation is
// held and the 750 left are split 1:1:3 — 150, 150, 450 — so the
// reserving client gets 400 in all (counts rounded to tens).
func Example() {
	now := time.Unix(0, 0)
	s, err := mclock.New[string, int](mclock.Config{Now: func() time.Time { return now }})
	if err != nil {
		fmt.Println(err)
		return
	}
	s.SetClient("db", mclock.Params{Reservation: 250, Weight: 1})
	s.SetClient("web", mclock.Params{Weight: 1})
	s.SetClient("batch", mclock.Params{Weight: 3})
	served := map[string]int{}
	for range 1000 {
		for _, c := range []string{"db", "web", "batch"} {
			for st, _ := s.Stats(c); st.Queued < 4; st.Queued++ {
				s.Enqueue(c, 4096, 0)
			}
		}
		req, ok, _ := s.Dequeue()
		if ok {
			served[req.Client]++
		}
		now = now.Add(time.Millisecond)
	}
	round := func(n int) int { return (n + 5) / 10 * 10 }
	fmt.Println("db", round(served["db"]), "web", round(served["web"]), "batch", round(served["batch"]))
	// Output: db 400 web 150 batch 450
}
