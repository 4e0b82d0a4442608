package virtio

// QueueServer is a Device whose queues can also be served one at a time,
// outside an Activation. A vhost-user back-end needs this: the front-end
// describes, starts and stops each ring on its own (a ring starts at its
// kick and stops at GET_VRING_BASE, which must answer with the index the
// ring resumes from), where a virtio transport activates and resets all
// queues at once.
//
// A device serves either through Activate or through ServeQueue, never
// both at once: ServeQueue fails while an Activation runs, and Activate
// fails while a queue is served.
type QueueServer interface {
	Device
	// ServeQueue starts serving q, the queue at index (an index of
	// QueueMaxSizes), with the negotiated features, and returns at once.
	// The caller keeps q's interrupt trigger and may change it while the
	// queue is served (Queue.SetInterrupt); it delivers kicks with
	// Queue.Kick.
	ServeQueue(index int, q *Queue, features uint64) (ServedQueue, error)
}

// ServedQueue is a queue being served by a QueueServer. Stop and Abort
// may be called more than once, and from any goroutine; the first call
// decides.
type ServedQueue interface {
	// Stop stops taking chains, waits for the ones in flight, returns them
	// to the used ring and signals the driver, then stops. When it returns
	// no goroutine of the device touches the queue or guest memory any
	// more, and, unless the queue broke, every chain taken is in the used
	// ring: Queue.NextAvail is where a successor resumes without losing a
	// request. It waits for requests already on the device's back-end.
	Stop()
	// Abort stops as soon as the requests already on the back-end finish,
	// dropping chains taken and not yet started: for a driver that is gone
	// (a vhost-user front-end that disconnected), which will not read the
	// used ring again.
	Abort()
}
