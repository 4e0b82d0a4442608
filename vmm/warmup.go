package vmm

import (
	"slices"
	"time"

	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/state"
)

// A migration's stop-and-copy saves, encodes, decodes and restores the
// state of every component. The first time a process does that it also
// pays for first use: encoding/json building each State type's encoder
// and field tables by reflection, and code and data touched for the first
// time (far dearer under emulation, as in the nested lab, where the first
// hop's downtime was several times the later ones'). The warm-ups here
// pay it before the pause: on the source when a migration starts, on the
// destination before it answers ready.

// warmUpCodecs runs the state codec over a sample of every component's
// State type (state.WarmUp). It reads no component, so the VM may be
// running. A failure only means the pause pays the first use after all.
func (v *VM) warmUpCodecs() {
	start := time.Now()
	v.hp.mu.Lock() // the devices may be hot-plugged while the VM runs
	comps, err := v.components()
	v.hp.mu.Unlock()
	if err != nil {
		v.log.Debug("warming up the state codec", "err", err)
		return
	}
	var samples []any
	for _, c := range comps {
		if s, ok := c.c.(state.Sampler); ok {
			samples = append(samples, s.StateSample())
		}
	}
	if err := state.WarmUp(samples); err != nil {
		v.log.Debug("warming up the state codec", "err", err)
		return
	}
	v.log.Debug("state codec warmed up", "types", len(samples), "took", time.Since(start))
}

// msrTSC is IA32_TIME_STAMP_COUNTER, which warmUpKVM does not write back.
const msrTSC = 0x10

// warmUpKVM reads the state of a migration's destination's vCPUs and
// interrupt controllers and writes it back, as its restore will: the
// first KVM_GET/SET of each kind, and the code around them, cost far
// more than the later ones under emulation. Only for a VM whose vCPUs
// have never run and whose state the restore then overwrites, part by
// part (NewIncoming's, before it answers ready). The TSC is read but not
// written: a host write of it feeds KVM's TSC synchronization across
// vCPUs, which the restore's own write must meet as it would without
// this one. The PIT is only read: writing it would arm its timer.
func (v *VM) warmUpKVM() error {
	start := time.Now()
	msrs, err := v.msrIndex()
	if err != nil {
		return err
	}
	for _, c := range v.cpus {
		s, _, err := c.SaveState(msrs)
		if err != nil {
			return err
		}
		b, err := state.Marshal(s)
		if err != nil {
			return err
		}
		if s, err = decodeCPUState(b); err != nil {
			return err
		}
		s.MSRs = slices.DeleteFunc(s.MSRs, func(e kvm.MSREntry) bool { return e.Index == msrTSC })
		if _, err := c.RestoreState(s); err != nil {
			return err
		}
	}
	irq := &irqchipState{vm: v.kvm}
	b, err := irq.MarshalState()
	if err != nil {
		return err
	}
	if err := irq.UnmarshalState(irq.StateVersion(), b); err != nil {
		return err
	}
	if _, err := (&pitState{vm: v.kvm}).MarshalState(); err != nil {
		return err
	}
	v.log.Debug("KVM state paths warmed up", "vcpus", len(v.cpus), "took", time.Since(start))
	return nil
}
