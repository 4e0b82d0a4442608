package mclock

import "math"

// Load is one client in Allocate: its parameters and how much it asks
// for (cost units a second; 0 is a client that always has requests
// queued).
type Load struct {
	Params Params
	Demand float64
}

// Allocate returns the rates (cost units a second) the clients settle at
// on a device that serves capacity cost units a second, according to
// the rules the scheduler implements — a fluid model, computed directly
// rather than by running the tags, so it can check the scheduler and
// tell an operator what a setting will do before applying it:
//
//   - reservations first: if they add up to more than the capacity, the
//     reserving clients share it in proportion to their reservations and
//     the others get nothing;
//   - ShareSpare: each client gets its reservation and the capacity left
//     is split by weight, a client's split ending where its limit or
//     demand is reached (what it does not use goes to the others by
//     weight);
//   - ShareTotal: each client gets weight·λ clamped to [reservation,
//     limit] (and its demand), with λ chosen so the capacity is used.
//
// The parameters must be valid (see Params.Validate).
func Allocate(capacity float64, sharing Sharing, loads []Load) []float64 {
	n := len(loads)
	out := make([]float64, n)
	ceil := make([]float64, n)  // the most a client can take
	floor := make([]float64, n) // what its reservation gives it
	var sumFloor float64
	for i, l := range loads {
		ceil[i] = math.Inf(1)
		if l.Params.Limit > 0 {
			ceil[i] = l.Params.Limit
		}
		if l.Demand > 0 {
			ceil[i] = min(ceil[i], l.Demand)
		}
		floor[i] = min(l.Params.Reservation, ceil[i])
		sumFloor += floor[i]
	}
	if capacity <= 0 {
		return out
	}
	if sumFloor >= capacity {
		for i := range out {
			out[i] = floor[i] * capacity / sumFloor
		}
		return out
	}
	if sharing == ShareSpare {
		// Water-fill the spare capacity by weight over the headroom each
		// client has above its reservation.
		copy(out, floor)
		spare := capacity - sumFloor
		open := make([]bool, n)
		for i := range open {
			open[i] = ceil[i] > floor[i]
		}
		for spare > 1e-12 {
			var sumW float64
			for i := range open {
				if open[i] {
					sumW += loads[i].Params.Weight
				}
			}
			if sumW == 0 {
				break
			}
			level := spare / sumW
			capped := false
			for i := range open {
				if open[i] && level*loads[i].Params.Weight >= ceil[i]-floor[i] {
					// This client's headroom ends below the level: it
					// takes all of it and leaves the rest to the others
					// (whose level can only rise, so the ones capped in
					// this pass stay capped).
					spare -= ceil[i] - floor[i]
					out[i] = ceil[i]
					open[i] = false
					capped = true
				}
			}
			if !capped {
				for i := range open {
					if open[i] {
						out[i] += level * loads[i].Params.Weight
					}
				}
				break
			}
		}
		return out
	}
	// ShareTotal: find λ with Σ clamp(λ·w, floor, ceil) = capacity by
	// bisection (the sum only grows with λ).
	sum := func(lambda float64) float64 {
		var t float64
		for i, l := range loads {
			t += min(max(lambda*l.Params.Weight, floor[i]), ceil[i])
		}
		return t
	}
	lo, hi := 0.0, 1.0
	for sum(hi) < capacity {
		hi *= 2
		if hi > 1e30 {
			break // every client is at its ceiling
		}
	}
	for range 200 {
		mid := (lo + hi) / 2
		if sum(mid) < capacity {
			lo = mid
		} else {
			hi = mid
		}
	}
	for i, l := range loads {
		out[i] = min(max(hi*l.Params.Weight, floor[i]), ceil[i])
	}
	return out
}
