package sriov

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/viovmm/vio/sriov/nvmevirt"
)

// nvmeSetup manages an NVMe PF's secondary controllers, one per VF, in
// the order the NVMe specification and QEMU's model of it require:
//
//  1. each secondary offline (which also takes its resources back);
//  2. if the flexible pools lack what the VFs need because the primary
//     holds it (QEMU starts so), the primary's share lowered with a
//     Primary Flexible allocation, which takes effect at the PF's next
//     function reset: one reset, and a wait for the host driver to bring
//     the controller back;
//  3. VQ and VI resources assigned to each secondary, still offline;
//  4. (the caller enables the VFs)
//  5. each secondary online: a controller accepts that only once its VF
//     exists.
type nvmeSetup struct {
	h    *Host
	pf   PF
	ctrl NVMeController
	// virt is false for a controller without virtualization management:
	// its VFs have fixed resources and nothing is sent.
	virt bool
}

func (h *Host) openNVMeSetup(pf PF) (*nvmeSetup, error) {
	if pf.Driver != "nvme" || pf.NVMe == "" {
		d := pf.Driver
		if d == "" {
			d = "no driver"
		}
		return nil, fmt.Errorf("%s is an NVMe controller with %s: its secondary controllers are managed through the host's nvme driver, so bind it first: echo %s > %s/bus/pci/drivers/nvme/bind", pf.BDF, d, pf.BDF, h.sys())
	}
	c, err := h.openNVMe(filepath.Join(h.dev(), pf.NVMe))
	if err != nil {
		return nil, err
	}
	s := &nvmeSetup{h: h, pf: pf, ctrl: c, virt: true}
	if _, err := nvmevirt.ReadPrimaryCaps(c); err != nil {
		var se *nvmevirt.StatusError
		if !errors.As(err, &se) {
			c.Close()
			return nil, fmt.Errorf("%s (%s): %w", pf.BDF, pf.NVMe, err)
		}
		h.logf("%s: the controller has no virtualization management (%v): its VFs keep the resources they have", pf.BDF, err)
		s.virt = false
	}
	return s, nil
}

func (s *nvmeSetup) close() { s.ctrl.Close() }

// secondaries returns the secondary controller of each VF 1..n.
func (s *nvmeSetup) secondaries(n int) ([]nvmevirt.Secondary, error) {
	list, err := nvmevirt.ReadSecondaries(s.ctrl)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.pf.BDF, err)
	}
	out := make([]nvmevirt.Secondary, n)
	for i := range out {
		sc, ok := nvmevirt.ForVF(list, i+1)
		if !ok {
			return nil, fmt.Errorf("%s lists no secondary controller for VF %d (of %d secondaries): the controller cannot serve that many VFs", s.pf.BDF, i+1, len(list))
		}
		out[i] = sc
	}
	return out, nil
}

// allOnline reports whether VFs 1..n have their secondaries online.
func (s *nvmeSetup) allOnline(n int) bool {
	if !s.virt {
		return true
	}
	secs, err := s.secondaries(n)
	if err != nil {
		return false
	}
	for _, sc := range secs {
		if !sc.Online {
			return false
		}
	}
	return true
}

// share decides each VF's resources of one type: the asked number, or
// the pool split evenly; at least min (what a secondary needs to come
// online), at most the controller's per-secondary maximum.
func share(bdf string, rt nvmevirt.Resource, asked, n, total, perMax, min int) (int, error) {
	what := map[nvmevirt.Resource]string{nvmevirt.VQ: "queue resources (VQ, --vq)", nvmevirt.VI: "interrupt resources (VI, --vi)"}[rt]
	need := map[nvmevirt.Resource]string{nvmevirt.VQ: "2 (an admin and an I/O queue)", nvmevirt.VI: "1"}[rt]
	v := asked
	if v == 0 {
		v = total / n
		if perMax > 0 && v > perMax {
			v = perMax
		}
	}
	switch {
	case v < min:
		if asked != 0 {
			return 0, fmt.Errorf("each VF needs at least %s %s, not %d", need, what, asked)
		}
		return 0, fmt.Errorf("%s has %d flexible %s for %d VFs, and each needs at least %s: enable at most %d VFs", bdf, total, what, n, need, total/min)
	case perMax > 0 && v > perMax:
		return 0, fmt.Errorf("%s gives one VF at most %d %s, not %d", bdf, perMax, what, v)
	case v*n > total:
		return 0, fmt.Errorf("%s has %d flexible %s in all, not %d for each of %d VFs", bdf, total, what, v, n)
	}
	return v, nil
}

// prepare does steps 1 to 3 for VFs 1..n.
func (s *nvmeSetup) prepare(n int, o Options) error {
	if !s.virt {
		return nil
	}
	caps, err := nvmevirt.ReadPrimaryCaps(s.ctrl)
	if err != nil {
		return err
	}
	vq, err := share(s.pf.BDF, nvmevirt.VQ, o.VQ, n, int(caps.VQFRT), int(caps.VQFRSM), 2)
	if err != nil {
		return err
	}
	vi, err := share(s.pf.BDF, nvmevirt.VI, o.VI, n, int(caps.VIFRT), int(caps.VIFRSM), 1)
	if err != nil {
		return err
	}
	secs, err := s.secondaries(n)
	if err != nil {
		return err
	}
	for i, sc := range secs {
		if err := nvmevirt.Offline(s.ctrl, sc.SCID); err != nil {
			return fmt.Errorf("%s: %w", s.pf.BDF, err)
		}
		s.h.logf("%s: secondary controller %d (VF %d) offline", s.pf.BDF, sc.SCID, i+1)
	}
	if caps, err = nvmevirt.ReadPrimaryCaps(s.ctrl); err != nil {
		return err
	}
	if caps.Free(nvmevirt.VQ) < vq*n || caps.Free(nvmevirt.VI) < vi*n {
		if err := s.shrinkPrimary(caps, vq*n, vi*n); err != nil {
			return err
		}
	}
	for i, sc := range secs {
		if err := nvmevirt.Assign(s.ctrl, sc.SCID, nvmevirt.VQ, uint16(vq)); err != nil {
			return fmt.Errorf("%s: %w", s.pf.BDF, err)
		}
		if err := nvmevirt.Assign(s.ctrl, sc.SCID, nvmevirt.VI, uint16(vi)); err != nil {
			return fmt.Errorf("%s: %w", s.pf.BDF, err)
		}
		s.h.logf("%s: secondary controller %d (VF %d): %d VQ, %d VI", s.pf.BDF, sc.SCID, i+1, vq, vi)
	}
	return nil
}

// shrinkPrimary moves flexible resources off the primary so that needVQ
// and needVI are free: a Primary Flexible allocation of what is left over,
// then a function reset of the PF, which is when it takes effect.
func (s *nvmeSetup) shrinkPrimary(caps nvmevirt.PrimaryCaps, needVQ, needVI int) error {
	reset := filepath.Join(s.h.devices(), s.pf.BDF, "reset")
	if _, err := os.Stat(reset); err != nil {
		return fmt.Errorf("%s holds the flexible resources its VFs need, which it gives up only when reset, and the kernel has no way to reset it (no %s)", s.pf.BDF, reset)
	}
	type alloc struct {
		rt   nvmevirt.Resource
		keep int // what the primary keeps
	}
	allocs := []alloc{
		{nvmevirt.VQ, int(caps.VQFRT) - int(caps.VQRFA) - needVQ},
		{nvmevirt.VI, int(caps.VIFRT) - int(caps.VIRFA) - needVI},
	}
	for _, a := range allocs {
		if a.keep < 0 {
			return fmt.Errorf("%s's flexible %s resources, less what other secondary controllers hold, fall short of what these VFs need by %d: ask for fewer VFs or fewer per VF (--vq, --vi)", s.pf.BDF, a.rt, -a.keep)
		}
	}
	for _, a := range allocs {
		if err := nvmevirt.AllocatePrimary(s.ctrl, caps.CNTLID, a.rt, uint16(a.keep)); err != nil {
			return fmt.Errorf("%s: %w", s.pf.BDF, err)
		}
	}
	s.h.logf("%s: resetting the PF once, to move flexible resources from it to its VFs", s.pf.BDF)
	if err := s.h.write(reset, "1"); err != nil {
		return err
	}
	if err := s.waitLive(); err != nil {
		return err
	}
	after, err := nvmevirt.ReadPrimaryCaps(s.ctrl)
	if err != nil {
		return err
	}
	if after.Free(nvmevirt.VQ) < needVQ || after.Free(nvmevirt.VI) < needVI {
		return fmt.Errorf("%s still has only %d VQ and %d VI free after its reset, not the %d and %d its VFs need", s.pf.BDF, after.Free(nvmevirt.VQ), after.Free(nvmevirt.VI), needVQ, needVI)
	}
	return nil
}

// waitLive waits for the host's nvme driver to have the PF's controller
// live again after a reset: it re-initializes it on a workqueue of its
// own, and admin commands sent before then fail.
func (s *nvmeSetup) waitLive() error {
	state := filepath.Join(s.h.devices(), s.pf.BDF, "nvme", s.pf.NVMe, "state")
	limit := s.h.LiveTimeout
	if limit == 0 {
		limit = time.Minute
	}
	deadline := time.Now().Add(limit)
	for {
		b, err := readSmall(state)
		if err == nil && strings.TrimSpace(string(b)) == "live" {
			return nil
		}
		if time.Now().After(deadline) {
			got := strings.TrimSpace(string(b))
			if err != nil && !os.IsNotExist(err) {
				got = err.Error()
			}
			return fmt.Errorf("%s's controller %s is not live %v after its reset (state %q): dmesg says why", s.pf.BDF, s.pf.NVMe, limit, truncate(got))
		}
		time.Sleep(100 * time.Millisecond) // the driver gives no event to wait on
	}
}

// online does step 5 for VFs 1..n.
func (s *nvmeSetup) online(n int) error {
	if !s.virt {
		return nil
	}
	secs, err := s.secondaries(n)
	if err != nil {
		return err
	}
	for i, sc := range secs {
		if err := nvmevirt.Online(s.ctrl, sc.SCID); err != nil {
			return fmt.Errorf("%s: VF %d: %w", s.pf.BDF, i+1, err)
		}
		s.h.logf("%s: secondary controller %d (VF %d) online", s.pf.BDF, sc.SCID, i+1)
	}
	return nil
}

// release takes the secondaries of VFs 1..n offline, giving their
// resources back to the pool; failures are logged.
func (s *nvmeSetup) release(n int) {
	if !s.virt {
		return
	}
	secs, err := s.secondaries(n)
	if err != nil {
		s.h.logf("%s: secondaries not released: %v", s.pf.BDF, err)
		return
	}
	for _, sc := range secs {
		if err := nvmevirt.Offline(s.ctrl, sc.SCID); err != nil {
			s.h.logf("%s: %v", s.pf.BDF, err)
		}
	}
}

// fillSecondaries adds each VF's secondary controller to an NVMe PF read
// by List or Get, or says in NVMeNote why it cannot.
func (h *Host) fillSecondaries(pf *PF) {
	if !pf.IsNVMe() || len(pf.VFs) == 0 {
		return
	}
	if pf.NVMe == "" {
		pf.NVMeNote = "not bound to the host's nvme driver"
		return
	}
	c, err := h.openNVMe(filepath.Join(h.dev(), pf.NVMe))
	if err != nil {
		pf.NVMeNote = err.Error()
		return
	}
	defer c.Close()
	list, err := nvmevirt.ReadSecondaries(c)
	if err != nil {
		pf.NVMeNote = err.Error()
		return
	}
	for i := range pf.VFs {
		if sc, ok := nvmevirt.ForVF(list, pf.VFs[i].Index+1); ok {
			pf.VFs[i].Secondary = &sc
		}
	}
}
