package throttle_test

import (
	"flag"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/throttle"
)

// window is how long each measurement runs; the figure is over 10 s
// windows: go test ./block/throttle -run X -bench Throttle -args -throttle.window=10s
var window = flag.Duration("throttle.window", 2*time.Second, "measurement window of BenchmarkThrottle")

// measure runs workers issuing size-byte reads on disks (round-robin), all
// in group g. Once requests queue (the bucket's first fill is spent) it
// measures, for one window, the requests g admitted and each disk's
// completed bytes. There are many workers so that some always wait even
// when this busy machine is slow to wake a goroutine: the figure is the
// throttle's, not the load generator's.
func measure(g *throttle.Group, disks []block.Backend, workers, size int) (admitted float64, perDisk []int64) {
	stop := make(chan struct{})
	counts := make([]atomic.Int64, len(disks))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			disk := w % len(disks)
			p := make([]byte, size)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := disks[disk].ReadAt(p, 0); err != nil {
					return // closed at the end of the window
				}
				counts[disk].Add(int64(size))
			}
		}()
	}
	tick := time.NewTicker(time.Millisecond)
	for g.Stats().Queued == 0 {
		<-tick.C
	}
	tick.Stop()
	s0, t0 := g.Stats().Admitted, time.Now()
	c0 := make([]int64, len(disks))
	for i := range counts {
		c0[i] = counts[i].Load()
	}
	time.Sleep(*window) // the measurement window itself
	s1, t1 := g.Stats().Admitted, time.Now()
	perDisk = make([]int64, len(disks))
	for i := range counts {
		perDisk[i] = counts[i].Load() - c0[i]
	}
	close(stop)
	for _, d := range disks {
		d.Close() // fails the waiters, so the workers end
	}
	wg.Wait()
	return float64(s1-s0) / t1.Sub(t0).Seconds(), perDisk
}

func report(b *testing.B, what string, got, want float64) {
	b.ReportMetric(got, what+"/s")
	b.ReportMetric(100*got/want, "%_of_"+what+"_limit")
	b.Logf("%s: measured %.0f/s, configured %.0f/s (%+.2f%%) over %v", what, got, want, 100*(got-want)/want, *window)
}

func BenchmarkThrottle(b *testing.B) {
	const mib = 1 << 20
	closedOK := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	b.Run("bandwidth", func(b *testing.B) {
		l := throttle.Limits{Bandwidth: throttle.Bucket{Size: 32 * mib, RefillTime: time.Second}} // 32 MiB/s
		for range b.N {
			g, err := throttle.NewGroup("bw", l, nil)
			closedOK(err)
			d := throttle.NewInGroup(blocktest.NewMem(2*mib), g)
			reqs, _ := measure(g, []block.Backend{d}, 32, 64<<10)
			report(b, "bytes", reqs*(64<<10), l.Bandwidth.Rate())
		}
	})
	// Buckets hold a second's worth here: with a 100 ms bucket the ops
	// figure came out 1-14% low on this busy 2-core machine, because
	// whenever the process was descheduled for longer than the bucket
	// lasts, the refill overflowed the bucket and was lost (the bucket
	// bounds bursts, so that is the limit working as specified; the
	// measurement would then be of the machine).
	b.Run("ops", func(b *testing.B) {
		l := throttle.Limits{Ops: throttle.Bucket{Size: 2000, RefillTime: time.Second}} // 2000/s
		for range b.N {
			g, err := throttle.NewGroup("ops", l, nil)
			closedOK(err)
			d := throttle.NewInGroup(blocktest.NewMem(mib), g)
			reqs, _ := measure(g, []block.Backend{d}, 64, 4096)
			report(b, "ops", reqs, l.Ops.Rate())
		}
	})
	b.Run("group-of-two", func(b *testing.B) {
		l := throttle.Limits{Bandwidth: throttle.Bucket{Size: 32 * mib, RefillTime: time.Second}} // 32 MiB/s for both
		for range b.N {
			g, err := throttle.NewGroup("g", l, nil)
			closedOK(err)
			d1 := throttle.NewInGroup(blocktest.NewMem(2*mib), g)
			d2 := throttle.NewInGroup(blocktest.NewMem(2*mib), g)
			reqs, per := measure(g, []block.Backend{d1, d2}, 32, 64<<10)
			report(b, "bytes", reqs*(64<<10), l.Bandwidth.Rate())
			sum := float64(per[0] + per[1])
			b.Logf("shares of the group: disk 1 %.1f%%, disk 2 %.1f%%", 100*float64(per[0])/sum, 100*float64(per[1])/sum)
		}
	})
	b.Run("initial-burst", func(b *testing.B) {
		// 64 MiB of one-time burst plus the full 8 MiB bucket go at memory
		// speed; what follows at 32 MiB/s.
		l := throttle.Limits{Bandwidth: throttle.Bucket{Size: 8 * mib, RefillTime: 250 * time.Millisecond, OneTimeBurst: 64 * mib}}
		for range b.N {
			d, err := throttle.New(blocktest.NewMem(2*mib), l, nil)
			closedOK(err)
			p := make([]byte, mib)
			start := time.Now()
			for range 72 {
				d.ReadAt(p, 0)
			}
			burst := time.Since(start)
			start = time.Now()
			n := int(window.Seconds() * 32)
			for range n {
				d.ReadAt(p, 0)
			}
			after := time.Since(start)
			b.ReportMetric(float64(burst.Microseconds())/1000, "ms_for_72MiB_burst")
			report(b, "bytes-after-burst", float64(n*mib)/after.Seconds(), l.Bandwidth.Rate())
			b.Logf("72 MiB (burst and full bucket) in %v, then %d MiB in %v", burst, n, after)
			d.Close()
		}
	})
}
