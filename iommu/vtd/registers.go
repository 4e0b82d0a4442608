package vtd

import "encoding/binary"

// RegisterSize is the size of the unit's MMIO register block (one 4 KiB
// page, what the DRHD's size field 0 means).
const RegisterSize = 0x1000

// Register offsets (VT-d specification, chapter 11).
const (
	regVER     = 0x00 // 32
	regCAP     = 0x08 // 64
	regECAP    = 0x10 // 64
	regGCMD    = 0x18 // 32
	regGSTS    = 0x1c // 32
	regRTADDR  = 0x20 // 64
	regCCMD    = 0x28 // 64
	regFSTS    = 0x34 // 32
	regFECTL   = 0x38 // 32
	regFEDATA  = 0x3c // 32
	regFEADDR  = 0x40 // 32
	regFEUADDR = 0x44 // 32
	regPMEN    = 0x64 // 32
	regIQH     = 0x80 // 64
	regIQT     = 0x88 // 64
	regIQA     = 0x90 // 64
	regICS     = 0x9c // 32
	regIECTL   = 0xa0 // 32
	regIEDATA  = 0xa4 // 32
	regIEADDR  = 0xa8 // 32
	regIEUADDR = 0xac // 32

	// The IOTLB registers sit where ECAP.IRO says, the fault recording
	// registers where CAP.FRO says; both offsets are this unit's choice.
	regIVA   = 0x100 // 64: invalidate address
	regIOTLB = 0x108 // 64: IOTLB invalidate
	regFRCD  = 0x200 // NumFaultRecords 128-bit records

	// NumFaultRecords is the number of primary fault recording registers.
	NumFaultRecords = 8
	frcdSize        = 16
)

// Version 1.0.
const verValue = 0x10

// CAP fields.
const (
	capND16      = 6       // 16-bit domain ids
	capCM        = 1 << 7  // caching mode
	capSAGAW39   = 1 << 9  // 3-level tables
	capSAGAW48   = 1 << 10 // 4-level tables
	capMGAW      = (MaxAddressWidth - 1) << 16
	capFRO       = (regFRCD / 16) << 24
	capSLLPS2M   = 1 << 34
	capSLLPS1G   = 1 << 35
	capPSI       = 1 << 39
	capNFR       = (NumFaultRecords - 1) << 40
	capMAMVShift = 48
	// MaxAddressMask is CAP.MAMV: the largest AM a page-selective IOTLB
	// invalidation may use (2^18 pages, 1 GiB); a larger one is done as
	// domain-selective.
	MaxAddressMask = 18

	// MaxAddressWidth is MGAW: guest (device) addresses have 48 bits.
	MaxAddressWidth = 48
	// HostAddressWidth is the width of the guest physical addresses the
	// tables hold (the DMAR table's HAW).
	HostAddressWidth = 48
)

func capValue(cachingMode bool) uint64 {
	c := uint64(capND16 | capSAGAW39 | capSAGAW48 | capMGAW | capFRO |
		capSLLPS2M | capSLLPS1G | capPSI | capNFR | MaxAddressMask<<capMAMVShift)
	if cachingMode {
		c |= capCM
	}
	return c
}

// ECAP fields.
const (
	ecapC   = 1 << 0 // page-walk coherency: no cache flushes needed
	ecapQI  = 1 << 1 // queued invalidation
	ecapPT  = 1 << 6 // pass-through contexts
	ecapIRO = (regIVA / 16) << 8

	ecapValue = ecapC | ecapQI | ecapPT | ecapIRO
)

// GCMD and GSTS bits (the status bit sits at the command bit's position).
const (
	gcmdTE    = 1 << 31 // translation enable
	gcmdSRTP  = 1 << 30 // set root table pointer (one-shot)
	gcmdSFL   = 1 << 29 // set fault log (one-shot; no advanced logging)
	gcmdEAFL  = 1 << 28
	gcmdWBF   = 1 << 27 // write buffer flush (one-shot)
	gcmdQIE   = 1 << 26 // queued invalidation enable
	gcmdIRE   = 1 << 25
	gcmdSIRTP = 1 << 24
	gcmdCFI   = 1 << 23

	gstsTES  = gcmdTE
	gstsRTPS = gcmdSRTP
	gstsQIES = gcmdQIE
)

// FSTS bits.
const (
	fstsPFO      = 1 << 0
	fstsPPF      = 1 << 1
	fstsAFO      = 1 << 2
	fstsAPF      = 1 << 3
	fstsIQE      = 1 << 4
	fstsICE      = 1 << 5
	fstsITE      = 1 << 6
	fstsFRIShift = 8
	// fstsW1C are the bits software clears by writing 1.
	fstsW1C = fstsPFO | fstsAFO | fstsAPF | fstsIQE | fstsICE | fstsITE
	// fstsEvents are the conditions that raise a fault event when they
	// appear while none of them is pending.
	fstsEvents = fstsW1C | fstsPPF
)

// Interrupt control bits, shared by FECTL and IECTL.
const (
	ctlIM = 1 << 31 // interrupt mask
	ctlIP = 1 << 30 // interrupt pending (read only)
)

const (
	icsIWC   = 1 << 0
	pmenEPM  = 1 << 31
	pmenPRS  = 1 << 0
	addrMask = (1<<HostAddressWidth - 1) &^ 0xfff // bits HAW-1:12
)

// CCMD fields.
const (
	ccmdICC       = 1 << 63
	ccmdCIRGShift = 61
	ccmdCAIGShift = 59
	ccmdRW        = ccmdICC | 3<<ccmdCIRGShift | 3<<32 | 0xffff<<16 | 0xffff
)

// IOTLB register fields.
const (
	iotlbIVT       = 1 << 63
	iotlbIIRGShift = 60
	iotlbIAIGShift = 57
	iotlbRW        = iotlbIVT | 3<<iotlbIIRGShift | 1<<49 | 1<<48 | 0xffff<<32
	ivaRW          = addrMask | 1<<6 | 0x3f
)

// Invalidation granularities, as encoded in CCMD.CIRG, IOTLB.IIRG and the
// descriptors' G fields.
const (
	granGlobal = 1
	granDomain = 2
	granDevice = 3 // context: device-selective; IOTLB: page-selective
)

// IQ registers.
const (
	iqIndexMask = 0x7fff << 4 // IQH/IQT bits 18:4
	iqaRW       = addrMask | 7
)

// regs is the guest-visible register state. 64-bit registers are kept
// whole; 32-bit halves are merged in by write32.
type regs struct {
	gsts                  uint32
	rtaddr                uint64
	ccmd                  uint64
	fsts                  uint32 // without PPF, which is computed
	fectl, fedata, feaddr uint32
	feuaddr               uint32
	pmen                  uint32
	iqh, iqt, iqa         uint64
	ics                   uint32
	iectl, iedata, ieaddr uint32
	ieuaddr               uint32
	iva, iotlb            uint64
	frcd                  [NumFaultRecords][2]uint64
	nextFault             int // fault record the next fault goes to
}

func (r *regs) reset() {
	*r = regs{fectl: ctlIM, iectl: ctlIM}
}

// Read implements bus.Device. Accesses of 4 or 8 bytes at their natural
// alignment are served (an 8-byte access as its two dwords, low first);
// anything else reads zero.
func (u *Unit) Read(offset uint64, data []byte) {
	clear(data)
	if !accessOK(offset, len(data)) {
		return
	}
	u.mu.Lock()
	defer u.unlock()
	binary.LittleEndian.PutUint32(data, u.read32(offset))
	if len(data) == 8 {
		binary.LittleEndian.PutUint32(data[4:], u.read32(offset+4))
	}
}

// Write implements bus.Device, with Read's access rules; other accesses
// are ignored. An 8-byte write is two dword writes, low then high, which
// is also how the specification lets software split a 64-bit register
// write: commands in a high dword (CCMD.ICC, IOTLB.IVT) act on the whole
// register, the queue tail (IQT, low dword) acts at once.
func (u *Unit) Write(offset uint64, data []byte) {
	if !accessOK(offset, len(data)) {
		return
	}
	u.mu.Lock()
	defer u.unlock()
	u.write32(offset, binary.LittleEndian.Uint32(data))
	if len(data) == 8 {
		u.write32(offset+4, binary.LittleEndian.Uint32(data[4:]))
	}
}

func accessOK(offset uint64, n int) bool {
	return (n == 4 || n == 8) && offset%uint64(n) == 0 && offset < RegisterSize && uint64(n) <= RegisterSize-offset
}

// half returns the dword of v that off addresses (off%8 is 0 or 4).
func half(v uint64, off uint64) uint32 {
	if off%8 == 4 {
		return uint32(v >> 32)
	}
	return uint32(v)
}

// merge replaces the dword of old that off addresses with v.
func merge(old uint64, off uint64, v uint32) uint64 {
	if off%8 == 4 {
		return old&0xffffffff | uint64(v)<<32
	}
	return old&^0xffffffff | uint64(v)
}

// read32 returns the dword at off. Reserved bits and unknown offsets read
// as zero. Caller holds mu.
func (u *Unit) read32(off uint64) uint32 {
	r := &u.r
	q := off &^ 7
	switch {
	case off == regVER:
		return verValue
	case q == regCAP:
		return half(u.cap, off)
	case q == regECAP:
		return half(u.ecap, off)
	case off == regGSTS:
		return r.gsts
	case q == regRTADDR:
		return half(r.rtaddr, off)
	case q == regCCMD:
		return half(r.ccmd, off)
	case off == regFSTS:
		return u.fsts()
	case off == regFECTL:
		return r.fectl
	case off == regFEDATA:
		return r.fedata
	case off == regFEADDR:
		return r.feaddr
	case off == regFEUADDR:
		return r.feuaddr
	case off == regPMEN:
		return r.pmen
	case q == regIQH:
		return half(r.iqh, off)
	case q == regIQT:
		return half(r.iqt, off)
	case q == regIQA:
		return half(r.iqa, off)
	case off == regICS:
		return r.ics
	case off == regIECTL:
		return r.iectl
	case off == regIEDATA:
		return r.iedata
	case off == regIEADDR:
		return r.ieaddr
	case off == regIEUADDR:
		return r.ieuaddr
	case q == regIVA:
		return half(r.iva, off)
	case q == regIOTLB:
		return half(r.iotlb, off)
	case off >= regFRCD && off < regFRCD+NumFaultRecords*frcdSize:
		rec := (off - regFRCD) / frcdSize
		return half(r.frcd[rec][(off-regFRCD)%frcdSize/8], off)
	}
	return 0 // GCMD is write-only; everything else is reserved
}

// write32 stores the dword at off and performs what the write commands.
// Read-only registers, reserved bits and unknown offsets ignore writes.
// Caller holds mu.
func (u *Unit) write32(off uint64, v uint32) {
	r := &u.r
	q := off &^ 7
	switch {
	case off == regGCMD:
		u.writeGCMD(v)
	case q == regRTADDR:
		r.rtaddr = merge(r.rtaddr, off, v) & addrMask
	case q == regCCMD:
		r.ccmd = merge(r.ccmd, off, v) & ccmdRW
		if off%8 == 4 && r.ccmd&ccmdICC != 0 {
			u.contextCommand()
		}
	case off == regFSTS:
		u.writeFSTS(v)
	case off == regFECTL:
		u.writeFECTL(v)
	case off == regFEDATA:
		r.fedata = v & 0xffff
	case off == regFEADDR:
		r.feaddr = v &^ 3
	case off == regFEUADDR:
		r.feuaddr = v
	case off == regPMEN:
		// No protected memory regions (CAP.PLMR/PHMR are 0): the bit is
		// kept and its status mirrors it, nothing is protected.
		r.pmen = v & pmenEPM
		if v&pmenEPM != 0 {
			r.pmen |= pmenPRS
		}
	case q == regIQT:
		r.iqt = merge(r.iqt, off, v) & iqIndexMask
		if off%8 == 0 {
			u.processQueue()
		}
	case q == regIQA:
		r.iqa = merge(r.iqa, off, v) & iqaRW
	case off == regICS:
		if v&icsIWC != 0 {
			r.ics &^= icsIWC
			r.iectl &^= ctlIP
		}
	case off == regIECTL:
		u.writeIECTL(v)
	case off == regIEDATA:
		r.iedata = v & 0xffff
	case off == regIEADDR:
		r.ieaddr = v &^ 3
	case off == regIEUADDR:
		r.ieuaddr = v
	case q == regIVA:
		r.iva = merge(r.iva, off, v) & ivaRW
	case q == regIOTLB:
		r.iotlb = merge(r.iotlb, off, v) & iotlbRW
		if off%8 == 4 && r.iotlb&iotlbIVT != 0 {
			u.iotlbCommand()
		}
	case off >= regFRCD && off < regFRCD+NumFaultRecords*frcdSize:
		// Only F (bit 127, in the record's last dword) is writable: 1
		// clears the record.
		rec := (off - regFRCD) / frcdSize
		if (off-regFRCD)%frcdSize == 12 && v&(1<<31) != 0 {
			u.clearFaultRecord(int(rec))
		}
	}
}

// writeGCMD carries out a global command. Software writes the persistent
// bits (TE, QIE) with their current values plus at most one one-shot
// command; GSTS then reflects the persistent bits and reports completed
// one-shot commands, which take effect at once here.
func (u *Unit) writeGCMD(v uint32) {
	r := &u.r
	changed := false
	if v&gcmdSRTP != 0 {
		// The root pointer is latched now, not when RTADDR is written.
		// Cached entries may stay valid until software invalidates them;
		// dropping them is allowed and keeps a stale table from
		// outliving its pointer.
		u.rootPtr = r.rtaddr
		u.ctxCache.clear()
		u.iotlb.clear()
		u.bumpGen()
		r.gsts |= gstsRTPS
		changed = true
	}
	if te := v&gcmdTE != 0; te != (r.gsts&gstsTES != 0) {
		if te {
			r.gsts |= gstsTES
		} else {
			r.gsts &^= gstsTES
		}
		u.ctxCache.clear()
		u.iotlb.clear()
		u.bumpGen()
		changed = true
	}
	if changed {
		// Before GSTS can report the change: a follower of the guest's
		// mappings must have caught up by then.
		u.notify(Invalidation{Kind: TranslationChanged})
	}
	if qie := v&gcmdQIE != 0; qie != (r.gsts&gstsQIES != 0) {
		if qie {
			r.gsts |= gstsQIES
			u.processQueue()
		} else {
			r.gsts &^= gstsQIES
			// The head goes back to 0 when the queue is disabled, so
			// that software can start over with IQT = 0.
			r.iqh = 0
		}
	}
	// WBF completes at once (WBFS never shows); SFL, EAFL, IRE, SIRTP
	// and CFI name features this unit does not have and are ignored.
}

// fsts returns FSTS with PPF and FRI computed from the fault records.
func (u *Unit) fsts() uint32 {
	v := u.r.fsts
	for i := range u.r.frcd {
		if u.r.frcd[i][1]&frcdF != 0 {
			v |= fstsPPF
			break
		}
	}
	if v&fstsPPF == 0 {
		v &^= 0xff << fstsFRIShift
	}
	return v
}

func (u *Unit) writeFSTS(v uint32) {
	r := &u.r
	wasIQE := r.fsts&fstsIQE != 0
	r.fsts &^= v & fstsW1C
	u.faultConditionsServiced()
	if wasIQE && r.fsts&fstsIQE == 0 {
		// Software fixed or replaced the bad descriptor: fetching
		// resumes at IQH.
		u.processQueue()
	}
}

func (u *Unit) writeFECTL(v uint32) {
	r := &u.r
	r.fectl = r.fectl&ctlIP | v&ctlIM
	if r.fectl&ctlIM == 0 && r.fectl&ctlIP != 0 {
		r.fectl &^= ctlIP
		u.raise(uint64(r.feuaddr)<<32|uint64(r.feaddr), r.fedata)
	}
}

func (u *Unit) writeIECTL(v uint32) {
	r := &u.r
	r.iectl = r.iectl&ctlIP | v&ctlIM
	if r.iectl&ctlIM == 0 && r.iectl&ctlIP != 0 {
		r.iectl &^= ctlIP
		u.raise(uint64(r.ieuaddr)<<32|uint64(r.ieaddr), r.iedata)
	}
}
