package vtd

import "encoding/binary"

// Root entries (legacy mode): bit 0 present, bits 63:12 the context
// table; the high quadword is reserved.
const (
	rootP          = 1
	rootLoReserved = ^uint64(addrMask | rootP)
)

// Context entries (legacy mode). Low: P (0), FPD (1), TT (3:2), the
// second-level page table (63:12). High: AW (2:0), available (6:3), DID
// (23:8); the rest is reserved.
const (
	ctxP           = 1
	ctxFPD         = 1 << 1
	ctxLoReserved  = ^uint64(addrMask | 0xf)
	ctxHiReserved  = ^uint64(0xffff<<8 | 0x7f)
	ttUntranslated = 0 // second-level translation of untranslated requests
	ttPassThrough  = 2
	aw39           = 1 // 3-level table
	aw48           = 2 // 4-level table
)

// Second-level paging entries: R (0), W (1), PS (7) in the levels that
// can map a superpage, the address (HAW-1:12). Bits 51:HAW are reserved
// everywhere; everything else this unit ignores (X, EMT, IPAT, SNP, TM
// and the available bits), as a lenient implementation may.
const (
	pteR          = 1
	pteW          = 1 << 1
	ptePS         = 1 << 7
	pteReserved   = (1<<52 - 1) &^ (1<<HostAddressWidth - 1)
	entriesPerLvl = 512
)

// faultNotPresent is walk's "R and W both clear": a read or a write fault
// depending on the access.
const faultNotPresent FaultReason = 0xff

// identitySpan is the chunk an untranslated access is split into: the
// rest of the 1 GiB-aligned block holding addr.
func identitySpan(addr uint64) uint64 { return 1<<30 - addr%(1<<30) }

// loadContext reads and checks the context entry of sid through the
// latched root table. Caller holds mu.
func (u *Unit) loadContext(sid uint16) (contextEntry, FaultReason) {
	var b [16]byte
	if _, err := u.mem.ReadAt(b[:], int64(u.rootPtr+uint64(sid>>8)*16)); err != nil {
		return contextEntry{}, FaultRootAccess
	}
	lo, hi := binary.LittleEndian.Uint64(b[:]), binary.LittleEndian.Uint64(b[8:])
	if lo&rootP == 0 {
		return contextEntry{}, FaultRootNotPresent
	}
	if lo&rootLoReserved != 0 || hi != 0 {
		return contextEntry{}, FaultRootReserved
	}
	if _, err := u.mem.ReadAt(b[:], int64(lo&addrMask+uint64(sid&0xff)*16)); err != nil {
		return contextEntry{}, FaultContextAccess
	}
	lo, hi = binary.LittleEndian.Uint64(b[:]), binary.LittleEndian.Uint64(b[8:])
	if lo&ctxP == 0 {
		return contextEntry{}, FaultContextNotPresent
	}
	if lo&ctxLoReserved != 0 || hi&ctxHiReserved != 0 {
		return contextEntry{}, FaultContextReserved
	}
	e := contextEntry{did: uint16(hi >> 8), fpd: lo&ctxFPD != 0}
	switch lo >> 2 & 3 {
	case ttUntranslated:
		switch hi & 7 {
		case aw39:
			e.levels = 3
		case aw48:
			e.levels = 4
		default:
			return contextEntry{}, FaultContextInvalid
		}
		e.root = lo & addrMask
	case ttPassThrough:
		e.passthrough = true // AW and the table pointer do not matter
	default:
		// 1 needs device-TLBs (ECAP.DT), 3 is reserved.
		return contextEntry{}, FaultContextInvalid
	}
	return e, 0
}

// context returns sid's context entry from the cache or the tables.
// Caller holds mu.
func (u *Unit) context(sid uint16) (contextEntry, FaultReason) {
	if e, ok := u.ctxCache.get(sid); ok {
		return e, 0
	}
	e, reason := u.loadContext(sid)
	if reason == 0 {
		u.ctxCache.put(sid, e)
	}
	return e, reason
}

// walk translates iova through the context's second-level tables. It
// returns the guest physical address of the mapping page holding iova,
// that page's level and the permissions accumulated along the way
// (an entry grants R or W only if every entry above it does too). It
// neither caches nor records. Caller holds mu.
func (u *Unit) walk(ctx contextEntry, iova uint64) (base uint64, level int, r, w bool, reason FaultReason) {
	if iova>>pageShift(ctx.levels+1) != 0 {
		return 0, 0, false, false, FaultAddressTooWide
	}
	table := ctx.root
	r, w = true, true
	var b [8]byte
	for level = ctx.levels; level >= 1; level-- {
		idx := iova >> pageShift(level) % entriesPerLvl
		if _, err := u.mem.ReadAt(b[:], int64(table+idx*8)); err != nil {
			return 0, 0, false, false, FaultPagingAccess
		}
		pte := binary.LittleEndian.Uint64(b[:])
		if pte&(pteR|pteW) == 0 {
			return 0, 0, false, false, faultNotPresent
		}
		r = r && pte&pteR != 0
		w = w && pte&pteW != 0
		if pte&pteReserved != 0 || level == 4 && pte&ptePS != 0 {
			return 0, 0, false, false, FaultPagingReserved
		}
		if level == 1 || pte&ptePS != 0 {
			size := uint64(1) << pageShift(level)
			if pte&addrMask&(size-1) != 0 {
				// A superpage's address must be aligned to its size.
				return 0, 0, false, false, FaultPagingReserved
			}
			return pte & addrMask, level, r, w, 0
		}
		table = pte & addrMask
	}
	panic("unreachable: level 1 is always a leaf")
}

// translation is the result of translating one address.
type translation struct {
	gpa         uint64 // of the translated address
	span        uint64 // bytes from gpa to the end of its mapping page
	read, write bool   // what the mapping page allows
}

// translate returns the guest physical address of the device address
// iova for an access by sid, how many bytes from there on the same
// mapping page covers, and the page's permissions. A failure is recorded
// as a fault and returned as a *Fault. Caller holds mu.
func (u *Unit) translate(sid uint16, iova uint64, write bool) (translation, error) {
	if u.r.gsts&gstsTES == 0 {
		return translation{iova, identitySpan(iova), true, true}, nil
	}
	ctx, reason := u.context(sid)
	if reason != 0 {
		return translation{}, u.fault(sid, iova, write, reason, false)
	}
	if ctx.passthrough {
		return translation{iova, identitySpan(iova), true, true}, nil
	}
	k, e, ok := u.iotlb.get(ctx.did, iova)
	if ok {
		u.stats.IOTLBHits++
	} else {
		u.stats.IOTLBMisses++
		base, level, r, w, reason := u.walk(ctx, iova)
		if reason != 0 {
			return translation{}, u.fault(sid, iova, write, reason, ctx.fpd)
		}
		k = iotlbKey{ctx.did, uint8(level), iova >> pageShift(level) << pageShift(level)}
		e = iotlbEntry{gpa: base, read: r, write: w}
		u.iotlb.put(k, e)
	}
	if write && !e.write {
		return translation{}, u.fault(sid, iova, write, FaultWrite, ctx.fpd)
	}
	if !write && !e.read {
		return translation{}, u.fault(sid, iova, write, FaultRead, ctx.fpd)
	}
	size := uint64(1) << pageShift(int(k.level))
	off := iova - k.page
	return translation{e.gpa + off, size - off, e.read, e.write}, nil
}

// fault records a translation fault and returns it as an error.
func (u *Unit) fault(sid uint16, iova uint64, write bool, reason FaultReason, fpd bool) error {
	if reason == faultNotPresent {
		reason = FaultRead
		if write {
			reason = FaultWrite
		}
	}
	f := &Fault{SourceID: sid, Addr: iova, Write: write, Reason: reason}
	u.recordFault(f, fpd)
	return f
}
