package migration_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/viovmm/vio/migration"
	"github.com/viovmm/vio/migration/migrationtest"
)

// BenchmarkSendReceive moves 64 MiB of RAM, half of it zero pages, from
// Send to Receive over a UNIX socket: the protocol's own cost, without a
// VM. b.SetBytes counts RAM moved, so MB/s reads as migration speed.
func BenchmarkSendReceive(b *testing.B) {
	const size = 64 << 20
	src := migrationtest.NewSource(size)
	r := rand.New(rand.NewPCG(1, 2))
	ram := src.Regions[0].Data
	for p := 0; p < size; p += 2 * page {
		for i := p; i < p+page; i += 8 {
			v := r.Uint64()
			for k := range 8 {
				ram[i+k] = byte(v >> (8 * k))
			}
		}
	}
	b.SetBytes(size)
	for b.Loop() {
		sc, dc := pair(b)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		errc := make(chan error, 1)
		go func() {
			rec, err := migration.Receive(ctx, dc, &migrationtest.Target{Sizes: []int{size}}, migration.ReceiveOptions{})
			if err == nil {
				err = rec.Finish(nil)
			}
			errc <- err
		}()
		if _, err := migration.Send(ctx, sc, src, migration.Options{}); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		src.Resume() // the double stays paused after a migration
		cancel()
		sc.Close()
		dc.Close()
	}
}
