// Package virtio is the transport-independent core of virtio 1.x (spec
// 1.2): feature bits, device status, the split virtqueue over guest memory,
// and the Device interface every virtio device model implements.
//
// # Writing a device
//
// A device model implements Device. The transport (package
// virtio/virtiopci) negotiates features with the driver, collects the
// queue configuration and, when the driver sets DRIVER_OK, calls
// Activate with one *Queue per enabled queue. From then on the device's
// own goroutine serves the queues:
//
//	for {
//		select {
//		case <-stop:
//			return
//		case <-q.Kicks():
//		}
//		for {
//			q.DisableNotifications()
//			for {
//				c, err := q.Next()
//				if err != nil { return } // queue broken: transport set DEVICE_NEEDS_RESET
//				if c == nil { break }
//				n := fill(c.Writable)        // zero copy: guest memory
//				q.Push(c.Head, n)
//			}
//			q.Signal()                       // interrupt if the driver wants one
//			if more, _ := q.EnableNotifications(); !more { break }
//		}
//	}
//
// Kicks come from the vCPU (or ioeventfd) path, which only signals the
// goroutine: no request is ever processed on a vCPU thread.
//
// # Hostile drivers
//
// Everything in a ring is guest-controlled. Two classes of error are
// distinguished, and the choice is part of the API:
//
//   - A bad chain (a descriptor whose buffer is outside guest RAM, a
//     readable descriptor after a writable one, a loop or a chain longer
//     than the queue, a bad indirect table, an indirect descriptor without
//     VIRTIO_F_INDIRECT_DESC) fails that request only: Next returns the
//     chain's head to the used ring with length 0 and moves on. The device
//     never sees it. QueueStats counts it.
//   - A bad ring (an avail index more than the queue size ahead of the
//     device, a head index out of range, a used ring write that fails) means
//     the queue can no longer be trusted: the queue stops, Next and Push
//     return an error matching ErrQueueBroken from then on, and the
//     transport sets DEVICE_NEEDS_RESET and raises a configuration change
//     interrupt, as spec section 2.1.1 describes. The driver must reset.
package virtio

import (
	"errors"

	"github.com/viovmm/vio/memory"
)

// DeviceType is the virtio device ID (spec section 5).
type DeviceType uint16

// Device types.
const (
	TypeNet     DeviceType = 1
	TypeBlock   DeviceType = 2
	TypeConsole DeviceType = 3
	TypeRNG     DeviceType = 4
	TypeBalloon DeviceType = 5
	TypeSCSI    DeviceType = 8
	Type9P      DeviceType = 9
	TypeGPU     DeviceType = 16
	TypeInput   DeviceType = 18
	TypeVsock   DeviceType = 19
	TypeFS      DeviceType = 26
)

// Reserved feature bits (spec section 6), as bit masks.
const (
	FeatureIndirectDesc     uint64 = 1 << 28 // VIRTIO_F_INDIRECT_DESC
	FeatureEventIdx         uint64 = 1 << 29 // VIRTIO_F_EVENT_IDX
	FeatureVersion1         uint64 = 1 << 32 // VIRTIO_F_VERSION_1
	FeatureAccessPlatform   uint64 = 1 << 33 // VIRTIO_F_ACCESS_PLATFORM
	FeatureRingPacked       uint64 = 1 << 34 // VIRTIO_F_RING_PACKED
	FeatureInOrder          uint64 = 1 << 35 // VIRTIO_F_IN_ORDER
	FeatureOrderPlatform    uint64 = 1 << 36 // VIRTIO_F_ORDER_PLATFORM
	FeatureSRIOV            uint64 = 1 << 37 // VIRTIO_F_SR_IOV
	FeatureNotificationData uint64 = 1 << 38 // VIRTIO_F_NOTIFICATION_DATA
	FeatureRingReset        uint64 = 1 << 40 // VIRTIO_F_RING_RESET
)

// TransportFeatures are the features the split queue implementation
// supports; transports offer them on top of Device.Features.
const TransportFeatures = FeatureVersion1 | FeatureEventIdx | FeatureIndirectDesc

// Device status bits (spec section 2.1).
const (
	StatusAcknowledge      uint8 = 1
	StatusDriver           uint8 = 2
	StatusDriverOK         uint8 = 4
	StatusFeaturesOK       uint8 = 8
	StatusDeviceNeedsReset uint8 = 0x40
	StatusFailed           uint8 = 0x80
)

// MaxQueueSize is the largest split queue (spec 2.7: at most 32768).
const MaxQueueSize = 32768

// Device is a virtio device model, independent of its transport.
//
// Type, Features and QueueMaxSizes describe the device and must return the
// same values for the device's whole life. Features are the device-type
// feature bits the device offers (the transport adds TransportFeatures);
// the driver may accept any subset. QueueMaxSizes has one entry per queue,
// each a power of two from 1 to MaxQueueSize.
//
// ReadConfig and WriteConfig access the device-specific configuration
// structure at offset (offset+len(data) ≤ 4096). Bytes beyond the
// structure read as zero and ignore writes. They may be called from any
// vCPU thread at any time, including before Activate and concurrently with
// the device's goroutine: the device guards its own state.
//
// Activate is called once the driver set DRIVER_OK, on the vCPU thread that
// wrote the status. It must not block on I/O: it validates, starts the
// device's goroutine(s) and returns. An error makes the transport set
// DEVICE_NEEDS_RESET. The device owns the Activation's queues until Reset.
//
// Reset is called when the driver resets the device (status 0), only
// after a successful Activate. When Reset returns, the device has stopped
// all queue processing: no goroutine of the device touches the queues or
// guest memory, or signals interrupts, any more; in-flight back-end
// requests have completed or been abandoned without writing guest memory.
// The device returns to its pre-Activate state, ready for another
// Activate.
type Device interface {
	Type() DeviceType
	Features() uint64
	QueueMaxSizes() []uint16
	ReadConfig(offset uint64, data []byte)
	WriteConfig(offset uint64, data []byte)
	Activate(a *Activation) error
	Reset()
}

// Activation is what a device gets when the driver is ready.
type Activation struct {
	// Memory is guest memory as the device reaches it (the identity on
	// guest RAM, or a translation when an IOMMU stands between); buffers in
	// chains already point into it. A device that writes through it uses
	// WriteAt or SliceForWrite and MarkDirty, so dirty tracking sees the
	// write; buffers in chains need nothing, Queue.Push marks them.
	Memory memory.DMA
	// Features is the negotiated feature set (device and transport bits).
	Features uint64
	// Queues holds one entry per queue index of QueueMaxSizes; nil for a
	// queue the driver did not enable.
	Queues []*Queue
	// ConfigChanged tells the driver the device configuration changed
	// (it bumps config_generation and raises the configuration
	// interrupt). Safe to call from any goroutine until Reset returns.
	ConfigChanged func()
}

// Errors.
var (
	// ErrQueueConfig reports a queue configuration the device refuses
	// (size, alignment, rings outside guest RAM).
	ErrQueueConfig = errors.New("virtio: invalid queue configuration")
	// ErrQueueBroken reports a queue stopped because its rings are
	// corrupt; only a device reset recovers.
	ErrQueueBroken = errors.New("virtio: queue broken")
	// ErrBadChain reports a malformed descriptor chain (counted in
	// QueueStats, returned to the driver with length 0).
	ErrBadChain = errors.New("virtio: bad descriptor chain")
)
