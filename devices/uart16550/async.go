package uart16550

import "github.com/viovmm/vio/devices/sink"

// The UART's asynchronous output writer lives in package sink, shared with
// the virtio console; these names keep the UART's callers working.
type AsyncWriter = sink.AsyncWriter

var (
	// ErrClosed reports a Write to a closed AsyncWriter.
	ErrClosed = sink.ErrClosed
	// NewAsyncWriter starts a writer with room for size bytes in flight.
	NewAsyncWriter = sink.NewAsyncWriter
)
