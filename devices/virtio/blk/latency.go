package blk

import "github.com/viovmm/vio/internal/latency"

// op is a request's kind as its latency is kept.
type op uint8

const (
	opRead op = iota
	opWrite
	opFlush
	opDiscard
	opWriteZeroes
	opOther // GET_ID, unknown types, malformed requests
	numOps
)

var opNames = [numOps]string{"read", "write", "flush", "discard", "write_zeroes", "other"}

// Latency returns, by request kind (read, write, flush, discard,
// write_zeroes, other), how long the device's requests took from being
// taken off the available ring to their used-ring entry: what the guest
// waits for, less its own notification and interrupt handling. It counts
// since the device was created, like Stats.
func (d *Device) Latency() map[string]latency.Snapshot {
	out := make(map[string]latency.Snapshot, numOps)
	for i := range d.latency {
		out[opNames[i]] = d.latency[i].Snapshot()
	}
	return out
}
