package vtd

import "encoding/binary"

// Notifier follows the guest's invalidations, for a consumer that mirrors
// the guest's mappings elsewhere (host VFIO mappings that follow a guest
// in caching mode, iommu/vfiomap). With CAP.CM set the guest invalidates
// after it maps as well as after it unmaps, so every change of its page
// tables reaches the Notifier; context invalidations and changes of
// translation as a whole (TE, SRTP, reset) reach it too, so that it can
// tell when a device changes domain.
//
// Contract:
//   - Invalidated is called synchronously for each invalidation
//     (register-based or queued) and each change of translation, after
//     the unit has dropped what it invalidated and before it reports the
//     invalidation complete to the guest (IVT or ICC cleared, the next
//     wait descriptor signalled, GSTS read back). A consumer that has
//     finished its own update when it returns therefore never lets the
//     guest believe an unmap is done while the mirror still maps it.
//   - It runs with the unit's lock held: it must not call the Unit's
//     methods, nor wait for anything that does (a device thread
//     translating through the unit). It may use ev.Lookup and ev.Tables,
//     which are valid only during the call.
//   - It must return in bounded time: it runs on the vCPU that wrote the
//     register. Tables.Walk takes a budget for that reason.
type Notifier interface {
	Invalidated(ev Invalidation)
}

// InvalidationKind says what an Invalidation covers.
type InvalidationKind int

const (
	// InvalidateMap: a page-selective invalidation whose first page is
	// mapped now: the guest mapped [IOVA, IOVA+Size) (or changed its
	// mapping). Walk the range with Lookup: map what it finds, unmap
	// the pages it refuses.
	InvalidateMap InvalidationKind = iota
	// InvalidateUnmap: a page-selective invalidation whose first page is
	// not mapped (or whose domain's tables the unit has not seen in its
	// context cache): the guest unmapped [IOVA, IOVA+Size). Only the
	// first page is looked at; a guest that mixes mapped and unmapped
	// pages in one invalidation is not what Linux does, and a follower
	// that must be exact can check the range with Lookup or Tables.Walk.
	InvalidateUnmap
	// InvalidateDomain: everything of Domain may have changed.
	InvalidateDomain
	// InvalidateAll: everything of every domain may have changed.
	InvalidateAll
	// InvalidateContextAll: a global context-cache invalidation: any
	// device's context may have changed (Tables.Context says what it is
	// now).
	InvalidateContextAll
	// InvalidateContextDomain: the contexts the unit had cached for
	// Domain may have changed.
	InvalidateContextDomain
	// InvalidateContextDevice: the context of SourceID (and of the
	// functions FunctionMask leaves out, see Covers) may have changed.
	InvalidateContextDevice
	// TranslationChanged: translation was turned on or off (GCMD.TE),
	// the root table pointer was latched (GCMD.SRTP), or the unit was
	// reset (or Resync asked): every device's context may have changed.
	TranslationChanged
)

var kindNames = [...]string{"map", "unmap", "domain", "all", "context-all", "context-domain", "context-device", "translation"}

func (k InvalidationKind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Invalidation is one invalidation as the Notifier sees it.
type Invalidation struct {
	Kind InvalidationKind
	// Domain is the domain of IOTLB invalidations and of
	// InvalidateContextDomain.
	Domain uint16
	// IOVA and Size give the range of a page-selective invalidation.
	IOVA, Size uint64
	// SourceID and FunctionMask name the device of
	// InvalidateContextDevice (see Covers).
	SourceID     uint16
	FunctionMask uint8
	// Lookup resolves a device address of Domain through the domain's
	// current tables, bypassing (and not filling) the IOTLB and recording
	// no fault. It is valid only during the Invalidated call.
	Lookup func(iova uint64) (Mapping, error)
	// Tables reads device contexts and walks tables; it is valid only
	// during the Invalidated call.
	Tables *Tables
}

// Covers reports whether the context invalidation ev may have changed
// the context of source id sid, whose context was c before: all of them
// for a global one, those of the domain for a domain one, the device (with
// the low function bits FunctionMask masks ignored) for a device one.
// IOTLB invalidations and TranslationChanged cover no context (the latter
// changes translation as a whole: a follower re-reads every context).
func (ev Invalidation) Covers(sid uint16, c DeviceContext) bool {
	switch ev.Kind {
	case InvalidateContextAll:
		return true
	case InvalidateContextDomain:
		return c.Mode != ContextBlocked && c.Domain == ev.Domain
	case InvalidateContextDevice:
		m := functionMask(ev.FunctionMask)
		return sid&m == ev.SourceID&m
	}
	return false
}

// Mapping is one mapping page of a domain.
type Mapping struct {
	IOVA, GPA, Size uint64 // the whole page holding the looked-up address
	Read, Write     bool
}

// contextInvalidate drops context-cache entries: granularity global,
// domain or device (sid with function mask fm). It reports whether the
// granularity was valid. Caller holds mu.
func (u *Unit) contextInvalidate(gran int, did, sid uint16, fm uint8) bool {
	switch gran {
	case granGlobal:
		u.ctxCache.clear()
	case granDomain:
		u.ctxCache.dropDomain(did)
	case granDevice:
		u.ctxCache.dropDevice(sid, fm)
		if u.cap&capCM != 0 && fm == 0 {
			// In caching mode the guest invalidates after making a
			// context present, so reload it now: the Notifier's lookups
			// for its domain then find the domain's tables.
			if e, reason := u.loadContext(sid); reason == 0 {
				u.ctxCache.put(sid, e)
			}
		}
	default:
		return false
	}
	u.bumpGen()
	ev := Invalidation{Kind: InvalidateContextAll}
	switch gran {
	case granDomain:
		ev.Kind, ev.Domain = InvalidateContextDomain, did
	case granDevice:
		ev.Kind, ev.SourceID, ev.FunctionMask = InvalidateContextDevice, sid, fm
	}
	u.notify(ev)
	return true
}

// iotlbInvalidate drops IOTLB entries: global, domain, or page-selective
// (the 2^am pages at addr). It returns the granularity actually done, 0
// for an invalid request. Caller holds mu.
func (u *Unit) iotlbInvalidate(gran int, did uint16, addr uint64, am uint8) int {
	ev := Invalidation{Domain: did}
	switch gran {
	case granGlobal:
		u.iotlb.clear()
		ev.Kind = InvalidateAll
	case granDomain:
		u.iotlb.dropDomain(did)
		ev.Kind = InvalidateDomain
	case granDevice:
		if am > MaxAddressMask {
			// Beyond MAMV: do it for the whole domain instead, which
			// the granularity the guest reads back tells it.
			return u.iotlbInvalidate(granDomain, did, 0, 0)
		}
		size := uint64(1) << (12 + am)
		start := addr &^ (size - 1)
		u.iotlb.dropRange(did, start, start+size-1)
		ev.IOVA, ev.Size = start, size
		ev.Kind = InvalidateUnmap
		if ctx, ok := u.ctxCache.rootOf(did); ok {
			if _, _, r, w, reason := u.walk(ctx, start); reason == 0 && (r || w) {
				ev.Kind = InvalidateMap
			}
		}
	default:
		return 0
	}
	u.bumpGen()
	u.notify(ev)
	return gran
}

// lookup is Invalidation.Lookup. Caller holds mu.
func (u *Unit) lookup(did uint16, iova uint64) (Mapping, error) {
	ctx, ok := u.ctxCache.rootOf(did)
	if !ok {
		return Mapping{}, &Fault{Addr: iova, Reason: FaultContextNotPresent}
	}
	base, level, r, w, reason := u.walk(ctx, iova)
	if reason == faultNotPresent {
		reason = FaultRead
	}
	if reason != 0 {
		return Mapping{}, &Fault{Addr: iova, Reason: reason}
	}
	size := uint64(1) << pageShift(level)
	return Mapping{IOVA: iova &^ (size - 1), GPA: base, Size: size, Read: r, Write: w}, nil
}

// contextCommand carries out a CCMD write with ICC set: the actual
// granularity is reported in CAIG (0 for an invalid request) and ICC
// clears, which is what the guest waits for.
func (u *Unit) contextCommand() {
	c := u.r.ccmd
	gran := int(c >> ccmdCIRGShift & 3)
	done := 0
	if u.contextInvalidate(gran, uint16(c), uint16(c>>16), uint8(c>>32&3)) {
		done = gran
	}
	u.r.ccmd = c&^(ccmdICC|3<<ccmdCAIGShift) | uint64(done)<<ccmdCAIGShift
}

// iotlbCommand carries out an IOTLB register write with IVT set, page
// selective ones at the address and mask in IVA.
func (u *Unit) iotlbCommand() {
	c := u.r.iotlb
	done := u.iotlbInvalidate(int(c>>iotlbIIRGShift&3), uint16(c>>32), u.r.iva&addrMask, uint8(u.r.iva&0x3f))
	u.r.iotlb = c&^(iotlbIVT|3<<iotlbIAIGShift) | uint64(done)<<iotlbIAIGShift
}

// Queued invalidation descriptors (128-bit, legacy mode).
const (
	descContext = 0x1
	descIOTLB   = 0x2
	descWait    = 0x5
	descSize    = 16

	// Reserved bits of each descriptor type, low and high quadwords.
	// Bits 11:9 (the high type bits of newer descriptor types) are
	// always reserved here.
	ctxDescLoReserved   = ^uint64(0xf | 3<<4 | 0xffff<<16 | 0xffff<<32 | 3<<48)
	iotlbDescLoReserved = ^uint64(0xf | 3<<4 | 1<<6 | 1<<7 | 0xffff<<16)
	iotlbDescHiReserved = 0x1f << 7 // between IH and the address
	waitDescLoReserved  = ^uint64(0xf | 1<<4 | 1<<5 | 1<<6 | 1<<7 | 0xffffffff<<32)
	waitIF              = 1 << 4
	waitSW              = 1 << 5
)

// processQueue executes the descriptors from IQH up to IQT, if queued
// invalidation is on and no error is pending. It stops at the first bad
// descriptor with IQE set and IQH pointing at it. The queue's size
// bounds the work. Caller holds mu.
func (u *Unit) processQueue() {
	r := &u.r
	if r.gsts&gstsQIES == 0 || r.fsts&fstsIQE != 0 {
		return
	}
	n := uint64(256) << (r.iqa & 7) // 16-byte descriptors in 2^QS pages
	head, tail := r.iqh>>4, r.iqt>>4
	if tail >= n || head >= n {
		u.queueError()
		return
	}
	base := r.iqa & addrMask
	var b [descSize]byte
	for head != tail {
		if _, err := u.mem.ReadAt(b[:], int64(base+head*descSize)); err != nil {
			break
		}
		if !u.execute(binary.LittleEndian.Uint64(b[:]), binary.LittleEndian.Uint64(b[8:])) {
			break
		}
		u.stats.Descriptors++
		head = (head + 1) % n
		r.iqh = head << 4
	}
	if head != tail {
		u.queueError()
	}
}

// execute runs one descriptor; false means it is invalid. Caller holds mu.
func (u *Unit) execute(lo, hi uint64) bool {
	switch lo & 0xf {
	case descContext:
		if lo&ctxDescLoReserved != 0 || hi != 0 {
			return false
		}
		return u.contextInvalidate(int(lo>>4&3), uint16(lo>>16), uint16(lo>>32), uint8(lo>>48&3))
	case descIOTLB:
		if lo&iotlbDescLoReserved != 0 || hi&iotlbDescHiReserved != 0 {
			return false
		}
		return u.iotlbInvalidate(int(lo>>4&3), uint16(lo>>16), hi&^0xfff, uint8(hi&0x3f)) != 0
	case descWait:
		if lo&waitDescLoReserved != 0 || hi&3 != 0 {
			return false
		}
		if lo&waitSW != 0 {
			// A status write that misses guest RAM is dropped, as a
			// write to nowhere is on a real bus.
			_ = u.mem.StoreUint32(hi&^3, uint32(lo>>32))
		}
		if lo&waitIF != 0 {
			u.invalidationEvent()
		}
		return true
	}
	// Device-TLB, interrupt entry cache and the scalable-mode types name
	// features this unit lacks: invalid, like unknown types.
	return false
}
