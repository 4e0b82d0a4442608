package mclock

// Tracker is dmClock's client side: a client that sends requests to
// several servers in front of one shared storage tells each server how
// much service the others gave it, so that the servers' reservations and
// limits hold for the client's total rather than per server.
//
// Call Completed for every response (with the cost and the phase the
// server reported) and Prepare before every request; send the result
// with the request (the server passes it to EnqueueDistributed). Memory
// is one small record per server; Forget drops one. A Tracker is not
// safe for concurrent use.
type Tracker[S comparable] struct {
	total, resv float64 // all service received, and its reservation part
	servers     map[S]*trackerServer
}

type trackerServer struct {
	own, ownResv   float64 // service from this server
	lastOthers     float64 // total-own at the last Prepare
	lastOthersResv float64
}

// NewTracker returns a tracker that has seen no service.
func NewTracker[S comparable]() *Tracker[S] {
	return &Tracker[S]{servers: make(map[S]*trackerServer)}
}

func (t *Tracker[S]) server(s S) (*trackerServer, bool) {
	r, ok := t.servers[s]
	if !ok {
		r = &trackerServer{}
		t.servers[s] = r
	}
	return r, ok
}

// Completed records that server s served a request of the given cost in
// the given phase. Costs that are not positive finite numbers are
// ignored (a server is a peer and may lie; it cannot corrupt the sums).
func (t *Tracker[S]) Completed(s S, cost float64, phase Phase) {
	if !(cost > 0 && cost <= maxRate*1e6) {
		return
	}
	r, _ := t.server(s)
	t.total += cost
	r.own += cost
	if phase == Reservation {
		t.resv += cost
		r.ownResv += cost
	}
}

// Prepare returns the service the client had from servers other than s
// since its last request to s (zero for the first request to s, which
// starts the server's accounting afresh).
func (t *Tracker[S]) Prepare(s S) Distributed {
	r, seen := t.server(s)
	others, othersResv := t.total-r.own, t.resv-r.ownResv
	d := Distributed{Delta: max(others-r.lastOthers, 0), Rho: max(othersResv-r.lastOthersResv, 0)}
	r.lastOthers, r.lastOthersResv = others, othersResv
	if !seen {
		return Distributed{}
	}
	d.Rho = min(d.Rho, d.Delta)
	return d
}

// Forget drops what the tracker keeps for server s.
func (t *Tracker[S]) Forget(s S) { delete(t.servers, s) }
