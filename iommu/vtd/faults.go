package vtd

import (
	"fmt"

	"github.com/viovmm/vio/memory"
)

// FaultReason is a DMA-remapping fault reason code, as the guest reads it
// from a fault record (VT-d specification, appendix "Non-Recoverable Fault
// Reason Encodings", legacy mode).
type FaultReason uint8

const (
	FaultRootNotPresent    FaultReason = 0x1 // root entry's P is clear
	FaultContextNotPresent FaultReason = 0x2 // context entry's P is clear
	FaultContextInvalid    FaultReason = 0x3 // bad AW or TT in a context entry
	FaultAddressTooWide    FaultReason = 0x4 // address beyond the context's AGAW
	FaultWrite             FaultReason = 0x5 // write to a page without W (or not present)
	FaultRead              FaultReason = 0x6 // read from a page without R (or not present)
	FaultPagingAccess      FaultReason = 0x7 // a paging entry is not in guest RAM
	FaultRootAccess        FaultReason = 0x8 // the root table is not in guest RAM
	FaultContextAccess     FaultReason = 0x9 // the context table is not in guest RAM
	FaultRootReserved      FaultReason = 0xa // reserved bits set in a root entry
	FaultContextReserved   FaultReason = 0xb // reserved bits set in a context entry
	FaultPagingReserved    FaultReason = 0xc // reserved bits set in a paging entry
)

// Fault is a failed translation. Its error matches memory.ErrNotMapped.
type Fault struct {
	SourceID uint16
	Addr     uint64 // the device address that failed
	Write    bool
	Reason   FaultReason
}

func (f *Fault) Error() string {
	kind := "read"
	if f.Write {
		kind = "write"
	}
	return fmt.Sprintf("vtd: DMA %s by %02x:%02x.%x at %#x blocked (fault reason %#x)",
		kind, f.SourceID>>8, f.SourceID>>3&0x1f, f.SourceID&7, f.Addr, uint8(f.Reason))
}

// Unwrap makes a Fault match memory.ErrNotMapped, as memory.DMA's
// contract asks of a failed translation.
func (f *Fault) Unwrap() error { return memory.ErrNotMapped }

// Fault record bits in the record's high quadword.
const (
	frcdF     = 1 << 63
	frcdT     = 1 << 62 // 1: read request, 0: write request
	frcdFRPos = 32
)

// recordFault logs a fault in the next fault recording register and raises
// the fault event, unless the context disabled fault recording (FPD) or
// the records are full, which sets PFO instead. Caller holds mu.
func (u *Unit) recordFault(f *Fault, fpd bool) {
	u.stats.Faults++
	if fpd {
		return
	}
	r := &u.r
	before := u.fsts()
	if before&fstsPFO != 0 {
		return // overflowed: nothing more is recorded until PFO is cleared
	}
	i := r.nextFault
	if r.frcd[i][1]&frcdF != 0 {
		r.fsts |= fstsPFO
		u.faultEvent(before)
		return
	}
	hi := uint64(frcdF) | uint64(f.Reason)<<frcdFRPos | uint64(f.SourceID)
	if !f.Write {
		hi |= frcdT
	}
	r.frcd[i] = [2]uint64{f.Addr &^ 0xfff, hi}
	r.nextFault = (i + 1) % NumFaultRecords
	if before&fstsPPF == 0 {
		r.fsts = r.fsts&^(0xff<<fstsFRIShift) | uint32(i)<<fstsFRIShift
	}
	u.faultEvent(before)
}

// faultEvent raises the fault event interrupt for a new condition, if no
// condition was pending before it (the guest's handler, which must run for
// that older one, will see the new one too).
func (u *Unit) faultEvent(before uint32) {
	r := &u.r
	if before&fstsEvents != 0 || r.fectl&ctlIP != 0 {
		return
	}
	if r.fectl&ctlIM != 0 {
		r.fectl |= ctlIP
		return
	}
	u.raise(uint64(r.feuaddr)<<32|uint64(r.feaddr), r.fedata)
}

// clearFaultRecord is software writing 1 to a record's F bit.
func (u *Unit) clearFaultRecord(i int) {
	u.r.frcd[i] = [2]uint64{}
	u.faultConditionsServiced()
}

// faultConditionsServiced clears FECTL.IP once software has cleared every
// fault condition, so that the next one interrupts again.
func (u *Unit) faultConditionsServiced() {
	if u.fsts()&fstsEvents == 0 {
		u.r.fectl &^= ctlIP
	}
}

// queueError sets FSTS.IQE: the descriptor at IQH is invalid or could not
// be fetched, and the queue stops there until software clears IQE.
func (u *Unit) queueError() {
	before := u.fsts()
	u.r.fsts |= fstsIQE
	u.faultEvent(before)
}

// invalidationEvent is an invalidation wait descriptor with IF set.
func (u *Unit) invalidationEvent() {
	r := &u.r
	if r.ics&icsIWC != 0 {
		return // not a new condition
	}
	r.ics |= icsIWC
	if r.iectl&ctlIM != 0 {
		r.iectl |= ctlIP
		return
	}
	u.raise(uint64(r.ieuaddr)<<32|uint64(r.ieaddr), r.iedata)
}
