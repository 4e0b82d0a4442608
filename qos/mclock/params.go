package mclock

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Errors a caller can match with errors.Is.
var (
	// ErrQueueFull: the client already holds its queue bound of requests.
	// The request was not taken; the caller should push back on the
	// client (a storage daemon stops reading its ring, a switch drops).
	ErrQueueFull = errors.New("client queue full")
	// ErrUnknownClient: the client was never added with SetClient, or was
	// removed.
	ErrUnknownClient = errors.New("unknown client")
	// ErrInvalid: a parameter, size or dmClock tag is out of range.
	ErrInvalid = errors.New("invalid")
)

// Params are one client's QoS settings. Rates are in cost units a second
// (see CostModel): with the default model a unit is one request, so rates
// are IOPS (or packets a second); with Bandwidth they are bytes a second.
type Params struct {
	// Reservation is the minimum rate the client gets while it has
	// requests queued, whatever the others do; 0 reserves nothing. The
	// sum of all reservations should stay below the device's capacity:
	// above it, reserving clients share the device in proportion to their
	// reservations and clients without one get nothing.
	Reservation float64
	// Weight is the client's share of the capacity the reservations leave
	// (Config.Sharing says exactly of what); it must be above zero. Only
	// ratios matter: weights 1 and 2 split spare capacity one third, two
	// thirds.
	Weight float64
	// Limit is the maximum rate; 0 is no limit. A limit holds even when
	// the device has nothing else to do.
	Limit float64
	// QueueLimit bounds the requests the client may have queued; 0 takes
	// Config.QueueLimit.
	QueueLimit int
}

// maxRate bounds every rate and weight: far above any device (10^12 cost
// units a second) yet small enough that cost/rate stays a normal float.
const maxRate = 1e12

// minRate keeps 1/rate finite and meaningful: a reservation of one unit
// every ~32 years is the least a client can ask for.
const minRate = 1e-9

// Validate checks p, with one sentence for what is wrong.
func (p Params) Validate() error {
	check := func(name string, v float64, zeroOK bool) error {
		switch {
		case math.IsNaN(v) || math.IsInf(v, 0):
			return fmt.Errorf("%w: %s %v is not a number; give a finite rate in cost units a second", ErrInvalid, name, v)
		case v < 0:
			return fmt.Errorf("%w: %s %v is negative; give 0 or a positive rate", ErrInvalid, name, v)
		case v == 0 && !zeroOK:
			return fmt.Errorf("%w: weight 0 would never be served; give a weight above zero (only ratios between clients matter)", ErrInvalid)
		case v != 0 && v < minRate:
			return fmt.Errorf("%w: %s %v is below the smallest supported value %g", ErrInvalid, name, v, minRate)
		case v > maxRate:
			return fmt.Errorf("%w: %s %v is above the largest supported value %g", ErrInvalid, name, v, float64(maxRate))
		}
		return nil
	}
	if err := check("reservation", p.Reservation, true); err != nil {
		return err
	}
	if err := check("weight", p.Weight, false); err != nil {
		return err
	}
	if err := check("limit", p.Limit, true); err != nil {
		return err
	}
	if p.Limit > 0 && p.Reservation > p.Limit {
		return fmt.Errorf("%w: reservation %v is above limit %v; a client cannot be guaranteed more than it may use, so lower the reservation or raise the limit", ErrInvalid, p.Reservation, p.Limit)
	}
	if p.QueueLimit < 0 {
		return fmt.Errorf("%w: queue limit %d is negative; give 0 for the default or a positive bound", ErrInvalid, p.QueueLimit)
	}
	return nil
}

// Sharing says what a weight is a share of.
type Sharing int

const (
	// ShareSpare (the default): reservations are served first and the
	// weights split what is left, so a client gets its reservation plus
	// its weighted share of the spare capacity (up to its limit). Service
	// in the reservation phase does not count against the weight: the
	// client's proportional tag is moved back when it is served there.
	ShareSpare Sharing = iota
	// ShareTotal is the paper's original rule: the weights split all of
	// the capacity and the reservation is a floor, so a client gets
	// max(reservation, weighted share), up to its limit.
	ShareTotal
)

func (s Sharing) String() string {
	switch s {
	case ShareSpare:
		return "spare"
	case ShareTotal:
		return "total"
	}
	return fmt.Sprintf("Sharing(%d)", int(s))
}

// CostModel turns a request's size into its cost: PerRequest +
// size/UnitBytes units, and at least 1 unit. The zero model costs every
// request 1 (IOPS or packets a second); Bandwidth costs a request its
// bytes; CostModel{PerRequest: 1, UnitBytes: 4096} charges a request
// for its overhead and for every 4 KiB it moves, which is how a disk's
// time is really spent.
type CostModel struct {
	PerRequest float64
	UnitBytes  int64 // 0: size is not charged
}

// Bandwidth makes rates bytes a second.
var Bandwidth = CostModel{UnitBytes: 1}

// Validate checks m.
func (m CostModel) Validate() error {
	if math.IsNaN(m.PerRequest) || math.IsInf(m.PerRequest, 0) || m.PerRequest < 0 {
		return fmt.Errorf("%w: cost per request %v must be a finite number of at least 0", ErrInvalid, m.PerRequest)
	}
	if m.UnitBytes < 0 {
		return fmt.Errorf("%w: cost unit of %d bytes is negative; give 0 (size not charged) or a positive size", ErrInvalid, m.UnitBytes)
	}
	return nil
}

// Cost returns the cost of a request of size bytes (at least 1).
func (m CostModel) Cost(size int64) float64 {
	c := m.PerRequest
	if m.UnitBytes > 0 && size > 0 {
		c += float64(size) / float64(m.UnitBytes)
	}
	return max(c, 1)
}

// DefaultQueueLimit is the per-client queue bound when Config gives none.
const DefaultQueueLimit = 1024

// Config configures a Scheduler.
type Config struct {
	// Now is the clock (time.Now when nil). Every method reads it, so a
	// test drives the scheduler with a simulated clock. A clock that goes
	// backwards is taken as standing still.
	Now func() time.Time
	// Sharing says what weights share; the zero value is ShareSpare.
	Sharing Sharing
	// Cost turns request sizes into cost units; the zero model is 1 per
	// request.
	Cost CostModel
	// QueueLimit bounds each client's queue unless its Params say
	// otherwise; 0 is DefaultQueueLimit.
	QueueLimit int
	// RateWindow is the window Stats.Rate is measured over; 0 is one
	// second.
	RateWindow time.Duration
	// LimitTolerance is how late a limited client's dispatch may be and
	// still be made up later; 0 is DefaultLimitTolerance. A dispatcher
	// only asks for a request when the device has room, so a request
	// whose limit expired is dispatched a little after; without
	// tolerance each such delay is lost and a client held at its limit
	// gets visibly less than it (25% less in this package's scenario
	// test). The price is burst: over any window of length T a client
	// gets at most Limit·(T + LimitTolerance) plus one request.
	LimitTolerance time.Duration
}

// DefaultLimitTolerance is the limit tolerance when Config gives none:
// a few device service times, and at 200 IOPS no more than two extra
// requests.
const DefaultLimitTolerance = 10 * time.Millisecond

// Validate checks c.
func (c Config) Validate() error {
	if c.Sharing != ShareSpare && c.Sharing != ShareTotal {
		return fmt.Errorf("%w: sharing mode %d is unknown; use ShareSpare or ShareTotal", ErrInvalid, int(c.Sharing))
	}
	if err := c.Cost.Validate(); err != nil {
		return err
	}
	if c.QueueLimit < 0 {
		return fmt.Errorf("%w: queue limit %d is negative; give 0 for the default or a positive bound", ErrInvalid, c.QueueLimit)
	}
	if c.LimitTolerance < 0 {
		return fmt.Errorf("%w: limit tolerance %v is negative; give 0 for the default or a positive duration", ErrInvalid, c.LimitTolerance)
	}
	if c.RateWindow < 0 {
		return fmt.Errorf("%w: rate window %v is negative; give 0 for one second or a positive duration", ErrInvalid, c.RateWindow)
	}
	return nil
}

// Distributed carries dmClock's two numbers with a request: the service
// the client received from the OTHER servers since its previous request
// to this one, in cost units. Delta counts all of it, Rho the part those
// servers gave in their reservation phase. A Tracker on the client side
// computes them.
type Distributed struct {
	Delta, Rho float64
}

// Validate checks d.
func (d Distributed) Validate() error {
	switch {
	case math.IsNaN(d.Delta) || math.IsInf(d.Delta, 0) || math.IsNaN(d.Rho) || math.IsInf(d.Rho, 0):
		return fmt.Errorf("%w: dmClock delta %v and rho %v must be finite", ErrInvalid, d.Delta, d.Rho)
	case d.Rho < 0 || d.Delta < 0:
		return fmt.Errorf("%w: dmClock delta %v and rho %v must not be negative", ErrInvalid, d.Delta, d.Rho)
	case d.Rho > d.Delta:
		return fmt.Errorf("%w: dmClock rho %v is above delta %v; reservation service is part of all service", ErrInvalid, d.Rho, d.Delta)
	case d.Delta > maxRate*1e6:
		return fmt.Errorf("%w: dmClock delta %v is beyond any real service", ErrInvalid, d.Delta)
	}
	return nil
}

// Phase is the phase a request was dispatched in.
type Phase uint8

const (
	// Reservation: served because the client was owed its reservation.
	Reservation Phase = iota + 1
	// Weight: served from spare capacity by proportional share.
	Weight
)

func (p Phase) String() string {
	switch p {
	case Reservation:
		return "reservation"
	case Weight:
		return "weight"
	}
	return fmt.Sprintf("Phase(%d)", int(p))
}
