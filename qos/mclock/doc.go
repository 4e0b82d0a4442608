// Package mclock is a cross-client I/O scheduler: mClock (Gulati,
// Merchant and Varman, "mClock: Handling Throughput Variability for
// Hypervisor IO Scheduling", OSDI 2010), with dmClock, the same paper's
// distributed extension, as an option.
//
// # Why mClock
//
// A token bucket per VM (what QEMU, Firecracker and Cloud Hypervisor
// offer) can only cap a VM. The place that sees every VM's requests to
// one device — a storage daemon serving several VMs, a switch in front of
// one uplink — can do more: guarantee each client a minimum rate
// (reservation), split what is left in proportion to weights, and still
// cap each (limit), all while the device's real capacity varies. mClock
// does that with three tags per client and two phases, in O(log n) a
// request.
//
// The package knows nothing of blocks or frames: a client is any
// comparable key (a connection, a VM, a port), a request has a size that
// a CostModel turns into cost units (one per request for IOPS, one per
// byte for bandwidth, or 1+size/unit for both), and a payload the
// scheduler hands back untouched. A caller that keeps its own per-client
// queues can enqueue struct{} and use only the client of each decision.
//
// # The tags
//
// Each client's head request carries:
//
//   - a reservation tag R, spaced cost/reservation seconds apart: the
//     time by which the request is owed to the client;
//   - a proportional tag P, spaced cost/weight apart in virtual time:
//     its place in the weighted share;
//   - a limit time: the earliest moment its limit lets it go (kept as a
//     GCRA's theoretical arrival time, max(previous, now−tolerance) +
//     cost/limit after each dispatch).
//
// Dequeue serves, first, the smallest reservation tag that is due
// (R ≤ now) among clients under their limit — the constraint-based
// phase — and otherwise the smallest proportional tag among clients under
// their limit — the weight-based phase. A tag counts only the service of
// its own phase: when a client is served in the weight phase its next
// reservation tag is moved back by cost/reservation (the paper's
// adjustment; without it, spare capacity a client received would push its
// reservation into the future), and, under ShareSpare, when it is served
// in the reservation phase its next proportional tag is moved back by
// cost/weight, so the weights split only what the reservations left.
// Under ShareTotal (the paper's rule) proportional tags count all
// service, and a client gets max(reservation, weighted share). Allocate
// computes the rates either rule gives, without running the tags.
//
// # Pitfalls, and what this package does about them
//
// Idle clients. A client that comes back after being idle must not cash
// in the time it was away. Its reservation tag starts at max(previous +
// cost/reservation, now). Its proportional tag starts at max(previous +
// cost/weight, v), where v is the smallest proportional tag among the
// clients competing now: this is the paper's idle-client adjustment (it
// shifts the active clients' tags so that the smallest equals now; here
// proportional tags live in virtual time and never meet the clock,
// which is the same adjustment without comparing 1/weight — which is not
// a duration — with seconds). A client held by its limit is brought up to
// v the same way when its limit lets it go, so time spent throttled is
// not banked either (a raised limit would otherwise release it as a
// burst).
//
// Backlogged clients. A client that stays backlogged keeps its tags
// spaced by its rates without being clamped to now, so a reservation the
// device could not honour for a moment is made up afterwards, and when
// reservations exceed the device's capacity they are served in proportion
// to each other. A reservation the device could not serve for a long time
// is owed for as long (the client's limit still caps the catching up).
//
// Limits on an idle device. A limit holds even when nothing else wants
// the device: Dequeue then returns no request and the time the next one
// may go, rounded up to the nanosecond so that asking again at that time
// always succeeds — a dispatcher sleeps exactly until then and never
// spins. Because dispatchers ask only when the device has room, a limited
// request leaves a little after its time; lateness up to
// Config.LimitTolerance is made up later (without that, a client held at
// 200/s got 150/s in this package's scenario test), and in exchange a
// client may get Limit·(T + tolerance) plus one request over a window T.
// The limit is checked in both phases, so catching up on a reservation
// never breaks it; a reservation above the limit is refused.
//
// Run-time changes. SetClient rescales the pending tags of a client to
// its new rates, so a lowered limit or a raised reservation applies to
// the request already waiting, not only to the ones after it.
//
// Tags at the head. Tags are computed when a request reaches the head of
// its client's queue, not when it arrives (Ceph's dmclock calls this
// delayed tag calculation): only the head's tags matter to the decision,
// parameter changes apply to the whole queue at once, and memory is a
// few numbers a client plus the queue itself, which is bounded
// (ErrQueueFull).
//
// # dmClock
//
// Several servers in front of one storage (several daemons, several
// switch ports to one host) can share one client's reservation and
// limit. The client's Tracker counts the service each server reports
// (cost and phase) and, with each request, tells the server how much the
// others gave it since its last request there: delta in all, rho in their
// reservation phases. The server (EnqueueDistributed) spaces the
// reservation tag by cost+rho, the proportional tag by cost+delta (by
// cost+delta−rho under ShareSpare) and the limit by cost+delta, so the
// servers together hold the client to one reservation and one limit.
//
// # Use
//
// The Scheduler is a plain data structure: no goroutines, no locks, its
// clock injected (Config.Now), so tests drive it through simulated time.
// The Dispatcher wraps it with one goroutine, a semaphore of the device's
// queue depth and a timer for the next eligible time. The storage
// daemon's and the switch's wiring come later (see docs/qos.md).
package mclock
