package mclock_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/viovmm/vio/qos/mclock"
)

// BenchmarkDequeue measures one dispatch (Dequeue and the Enqueue that
// refills the client) with N backlogged clients, a third of them with a
// reservation and a third with a limit, on a clock that moves 1 µs a
// dispatch (a 1M IOPS device).
func BenchmarkDequeue(b *testing.B) {
	for _, n := range []int{1, 10, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			now := time.Unix(0, 0)
			s, err := mclock.New[int, int](mclock.Config{Now: func() time.Time { return now }})
			if err != nil {
				b.Fatal(err)
			}
			for i := range n {
				p := mclock.Params{Weight: float64(1 + i%5)}
				switch i % 3 {
				case 1:
					p.Reservation = 1e6 / float64(3*n)
				case 2:
					p.Limit = 2e6 / float64(n)
				}
				if err := s.SetClient(i, p); err != nil {
					b.Fatal(err)
				}
				for range 4 {
					if err := s.Enqueue(i, 4096, 0); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				now = now.Add(time.Microsecond)
				req, ok, next := s.Dequeue()
				if !ok {
					now = next
					continue
				}
				if err := s.Enqueue(req.Client, 4096, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkScenario runs the issue's scenario over a simulated 1000 IOPS
// device for 10 simulated seconds and prints the table; each client's
// achieved rate is reported as a metric.
func BenchmarkScenario(b *testing.B) {
	for range b.N {
		x := newSim(b, 1000, mclock.ShareSpare, issueClients()...)
		x.run(10 * time.Second)
		{
			want := x.expect(mclock.ShareSpare)
			b.Logf("\n%s", x.table(want, time.Second, 10*time.Second))
			for _, c := range x.clients {
				b.ReportMetric(x.rate(c.name, time.Second, 10*time.Second), c.name+"-IOPS")
			}
		}
	}
}
