// Package migration moves a running VM to another vio over a stream (TCP
// or a UNIX socket) by pre-copy: the VM's config first, so the
// destination can build the same machine; then all of guest RAM while the
// guest runs (zero pages as runs without data); then, in iterations, the
// pages written since the previous one (KVM's dirty log and the VMM's own
// record of device writes, which the Source merges), until what is left
// fits the downtime target at the bandwidth measured; then the source is
// paused, the last pages and the device and vCPU state (the snapshot's
// state container) are sent, and the destination restores and runs the
// VM. docs/migration.md describes the stream and the behaviour.
//
// The package knows nothing of KVM or devices: vmm implements Source and
// Target. Every byte a peer sends is hostile: Receive checks each length,
// region, page and the order of records before it allocates or writes,
// and a bad stream ends in an error with the destination VM discarded.
package migration
