package qcow2

import (
	"fmt"
	"github.com/viovmm/vio/block"
)

// CheckResult is what Check found.
type CheckResult struct {
	// Corruptions counts problems that can lose data: clusters referenced
	// more often than their refcount says, invalid table entries,
	// references outside the file, wrong copied flags.
	Corruptions int
	// Leaks counts clusters whose refcount is higher than their
	// references: wasted space, no harm to data.
	Leaks int
	// AllocatedClusters is the number of guest clusters with data.
	AllocatedClusters, TotalClusters int64
	// Problems describes the first problems found.
	Problems []string
	// Repaired counts the problems Repair fixed.
	Repaired int
}

const maxProblems = 20

func (r *CheckResult) problem(corrupt bool, format string, args ...any) {
	if corrupt {
		r.Corruptions++
	} else {
		r.Leaks++
	}
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// Check recomputes every refcount from the tables that reference
// clusters (header, refcount structures, active and snapshot L1/L2
// tables, snapshot table) and compares them with the stored ones, as
// qemu-img check does. It repairs nothing.
func (img *Image) Check() (CheckResult, error) {
	return img.Repair(RepairNone)
}

// RepairMode selects what Repair fixes, as qemu-img check -r.
type RepairMode int

const (
	RepairNone RepairMode = iota
	// RepairLeaks lowers refcounts that are higher than the references.
	RepairLeaks
	// RepairAll also raises refcounts that are too low (where the
	// refcount block exists) and sets the copied flags right.
	RepairAll
)

// Repair checks the image as Check does, fixes what mode allows, and
// returns the result of checking again afterwards (the problems found
// before are listed in its Problems, marked as repaired).
func (img *Image) Repair(mode RepairMode) (CheckResult, error) {
	if img.closed.Load() {
		return CheckResult{}, fmt.Errorf("qcow2: check: %w", block.ErrClosed)
	}
	if mode != RepairNone && img.readOnly {
		return CheckResult{}, fmt.Errorf("qcow2: repairing: %w", block.ErrReadOnly)
	}
	img.ioLock.Lock()
	defer img.ioLock.Unlock()
	img.mu.Lock()
	defer img.mu.Unlock()
	if !img.readOnly {
		// Pending frees would otherwise show as leaks.
		if err := img.writeback(); err != nil {
			return CheckResult{}, err
		}
		if err := img.applyFrees(); err != nil {
			return CheckResult{}, err
		}
	}
	res, err := img.check(mode)
	if err != nil || mode == RepairNone {
		return res, err
	}
	if mode == RepairAll {
		if err := img.fixCopied(); err != nil {
			return res, err
		}
	}
	if err := img.writeback(); err != nil {
		return res, err
	}
	after, err := img.check(RepairNone)
	for _, p := range res.Problems {
		after.Problems = append(after.Problems, "repaired: "+p)
	}
	after.Repaired = res.Corruptions + res.Leaks - after.Corruptions - after.Leaks
	return after, err
}

// check does the work of Check and, per mode, corrects refcounts in the
// cache. Call with mu and ioLock held.
func (img *Image) check(mode RepairMode) (CheckResult, error) {
	var res CheckResult
	nclusters := (uint64(img.fileSize) + img.cs - 1) >> img.cbits
	refs := make([]uint32, nclusters)
	ref := func(what string, off, n uint64) {
		if n == 0 {
			return
		}
		for c := off >> img.cbits; c <= (off+n-1)>>img.cbits; c++ {
			if c >= nclusters {
				res.problem(true, "%s at %#x lies beyond the end of the file", what, c<<img.cbits)
				return
			}
			if refs[c] < 1<<31 {
				refs[c]++
			}
		}
	}
	h := img.h
	ref("header", 0, img.cs)
	ref("refcount table", h.refTableOffset, uint64(h.refTableClusters)*img.cs)
	for i, e := range img.refTable {
		if e != 0 {
			ref(fmt.Sprintf("refcount block %d", i), e, img.cs)
		}
	}
	if h.nbSnapshots > 0 {
		ref("snapshot table", h.snapshotsOffset, uint64(len(encodeSnapshots(img.snaps))))
	}
	walk := func(name string, l1off uint64, l1 []uint64, active bool) {
		ref(name+" L1 table", l1off, uint64(len(l1))*8)
		seen := make(map[uint64]bool)
		for i, e := range l1 {
			if e&l1Reserved != 0 || e&l1OffsetMask&(img.cs-1) != 0 {
				res.problem(true, "%s L1 entry %d (%#x) is invalid", name, i, e)
				continue
			}
			off := e & l1OffsetMask
			if off == 0 {
				continue
			}
			ref(name+" L2 table", off, img.cs)
			if off>>img.cbits >= nclusters {
				continue
			}
			if seen[off] {
				res.problem(true, "%s L1 entry %d: L2 table %#x is listed twice", name, i, off)
				continue
			}
			seen[off] = true
			t, err := img.l2Table(off)
			if err != nil {
				res.problem(true, "%s L2 table %d: %v", name, i, err)
				continue
			}
			data := append([]byte(nil), t.data...)
			for j := uint64(0); j < img.l2Entries; j++ {
				e := be.Uint64(data[j*8:])
				m, err := img.decode(e)
				if err != nil {
					res.problem(true, "%s: guest cluster %d: %v", name, uint64(i)*img.l2Entries+j, err)
					continue
				}
				switch {
				case m.kind == kCompressed:
					ref(name+" compressed cluster", m.host, m.csize)
				case m.host != 0:
					ref(name+" data cluster", m.host, img.cs)
				}
				if active && m.kind != kUnalloc && m.kind != kZero {
					res.AllocatedClusters++
				}
			}
		}
	}
	walk("active", h.l1Offset, img.l1, true)
	for _, s := range img.snaps {
		l1, err := img.readTable(s.l1Offset, uint64(s.l1Size))
		if err != nil {
			res.problem(true, "snapshot %q: reading its L1 table: %v", s.name, err)
			continue
		}
		walk(fmt.Sprintf("snapshot %q", s.name), s.l1Offset, l1, false)
	}
	res.TotalClusters = int64((h.size + img.cs - 1) >> img.cbits)

	// Compare with the stored refcounts, including those of clusters past
	// the end of the file that a refcount block covers.
	limit := max(nclusters, uint64(len(img.refTable))*img.refPerBlock)
	for c := uint64(0); c < limit; c++ {
		if c >= nclusters && (c/img.refPerBlock >= uint64(len(img.refTable)) || img.refTable[c/img.refPerBlock] == 0) {
			c = (c/img.refPerBlock+1)*img.refPerBlock - 1 // skip a range without a block
			continue
		}
		stored, err := img.refcount(c)
		if err != nil {
			return res, err
		}
		var want uint64
		if c < nclusters {
			want = uint64(refs[c])
		}
		switch {
		case stored < want:
			res.problem(true, "cluster %#x has refcount %d but %d references", c<<img.cbits, stored, want)
		case stored > want:
			res.problem(false, "cluster %#x has refcount %d but %d references (leaked)", c<<img.cbits, stored, want)
		}
		fix := (stored > want && mode >= RepairLeaks) || (stored < want && mode == RepairAll)
		if fix {
			if t, err := img.refBlock(c / img.refPerBlock); err == nil && t != nil {
				// A failure (a count too wide for the refcount
				// width) leaves the problem for the second check.
				if _, err := img.addRef(c, int64(want)-int64(stored)); err == nil && want == 0 {
					img.freeHint = min(img.freeHint, c)
					delete(img.meta, c)
				}
			}
		}
	}
	// The copied flag must say exactly whether the active tables own a
	// cluster alone.
	seen := make(map[uint64]bool)
	for i := range img.l1 {
		off, copied, err := img.l1Entry(uint64(i))
		if err != nil || off == 0 || off>>img.cbits >= nclusters || seen[off] {
			continue
		}
		seen[off] = true
		if r, _ := img.refcount(off >> img.cbits); (r == 1) != copied {
			res.problem(true, "L1 entry %d: copied flag %v but the L2 table has refcount %d", i, copied, r)
		}
		t, err := img.l2Table(off)
		if err != nil {
			continue
		}
		data := append([]byte(nil), t.data...)
		for j := uint64(0); j < img.l2Entries; j++ {
			e := be.Uint64(data[j*8:])
			m, err := img.decode(e)
			if err != nil || m.kind == kCompressed || m.host == 0 || m.host>>img.cbits >= nclusters {
				continue
			}
			if r, _ := img.refcount(m.host >> img.cbits); (r == 1) != (e&oflagCopied != 0) {
				res.problem(true, "guest cluster %d: copied flag %v but refcount %d", uint64(i)*img.l2Entries+j, e&oflagCopied != 0, r)
			}
		}
	}
	return res, nil
}
