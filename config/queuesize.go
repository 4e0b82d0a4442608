package config

import "fmt"

// maxQueueSize is the virtio maximum (virtio.MaxQueueSize; config does
// not import the device layers).
const maxQueueSize = 32768

// checkQueueSize refuses a queue_size a virtqueue cannot have, before it
// is narrowed to 16 bits (where 65536 would become 0, the default) or
// handed to a device: 0 for the default, else a power of two from 2 to
// 32768.
func checkQueueSize(what string, i, q int) error {
	if q == 0 || q >= 2 && q <= maxQueueSize && q&(q-1) == 0 {
		return nil
	}
	return fmt.Errorf("%s %d: queue_size %d: give a power of two from 2 to %d (or leave it out for the default)", what, i, q, maxQueueSize)
}
