// Package vhostuser speaks the vhost-user protocol: the control channel
// over a UNIX socket through which a VMM (the front-end) hands a virtio
// device's data path to another process (the back-end), such as
// qemu-storage-daemon's vhost-user-blk export or a DPDK switch.
//
// The front-end shares guest RAM as file descriptors (SET_MEM_TABLE),
// describes each virtqueue by its size, ring addresses and starting index,
// and passes an eventfd per queue for kicks (driver to device) and one for
// calls (device to driver). After that the back-end reads and writes the
// rings and buffers in the shared RAM directly; the VMM is out of the data
// path. In a VM, kicks come from an ioeventfd and calls go to an irqfd.
//
// The layers:
//   - wire.go: message header, request codes, payload encodings, and the
//     size rules each request's payload must obey in each direction.
//   - conn.go: one message per read or write on a stream socket, with file
//     descriptors carried as SCM_RIGHTS ancillary data.
//   - frontend.go: Frontend, the VMM side: feature negotiation,
//     configuration space, memory table, vring set-up and tear-down.
//   - backend.go, backend_mem.go, backend_ring.go: Backend, the device
//     side: it maps the regions of SET_MEM_TABLE, translates ring
//     addresses (front-end user addresses) to guest physical ones through
//     them, and serves each ring a front-end starts with a device model's
//     own queue code (virtio.QueueServer: virtio-blk's, for vio
//     serve-disk), one goroutine per ring reading its kick eventfd.
//   - log.go: a live migration's dirty log (VHOST_F_LOG_ALL with the
//     LOG_SHMFD protocol feature): DirtyLog, the front-end's memfd bitmap
//     it hands over with SET_LOG_BASE and takes marks from at each
//     pre-copy iteration, and the back-end's mapping of it, in which
//     every write to guest memory marks its pages while LOG_ALL is on.
//
// A peer is treated as hostile: a header whose size does not fit its
// request is refused before any payload is read, region counts and config
// lengths are bounded, a reply must answer the request that was sent, and
// every descriptor received with a message that is refused or not expected
// is closed. Each exchange runs under a deadline so that a silent peer
// cannot stall the VMM.
//
// The protocol is described in QEMU's docs/interop/vhost-user.rst. Only the
// requests needed for a virtio-blk or virtio-net data path are implemented;
// others are refused with ErrUnsupported. docs/vhost-user.md describes the
// back-end for users.
package vhostuser
