package e1000

// Register offsets in BAR0 (8254x Software Developer's Manual, section 13).
// Only the 82543-and-later layout is served; the 82542's aliases are not.
const (
	regCTRL    = 0x0000
	regSTATUS  = 0x0008
	regEECD    = 0x0010
	regEERD    = 0x0014
	regCTRLEXT = 0x0018
	regMDIC    = 0x0020
	regVET     = 0x0038
	regICR     = 0x00c0
	regITR     = 0x00c4
	regICS     = 0x00c8
	regIMS     = 0x00d0
	regIMC     = 0x00d8
	regRCTL    = 0x0100
	regTCTL    = 0x0400
	regPBA     = 0x1000
	regRDBAL   = 0x2800
	regRDBAH   = 0x2804
	regRDLEN   = 0x2808
	regRDH     = 0x2810
	regRDT     = 0x2818
	regRDTR    = 0x2820
	regRADV    = 0x282c
	regTDBAL   = 0x3800
	regTDBAH   = 0x3804
	regTDLEN   = 0x3808
	regTDH     = 0x3810
	regTDT     = 0x3818
	regTIDV    = 0x3820
	regTADV    = 0x382c
	regRXCSUM  = 0x5000
	regMTA     = 0x5200 // 128 registers
	regRAL0    = 0x5400 // RAL/RAH pairs, 16 of them
	regVFTA    = 0x5600 // 128 registers

	// Statistics, 0x4000-0x40FF: all read-to-clear.
	regStatsBase = 0x4000
	regStatsEnd  = 0x4100
)

// Statistics registers the device counts (offsets from 0x4000 / 4).
const (
	statMPC    = (0x4010 - regStatsBase) / 4 // missed packets
	statPRC64  = (0x405c - regStatsBase) / 4 // six size bins follow
	statGPRC   = (0x4074 - regStatsBase) / 4
	statBPRC   = (0x4078 - regStatsBase) / 4
	statMPRC   = (0x407c - regStatsBase) / 4
	statGPTC   = (0x4080 - regStatsBase) / 4
	statGORCL  = (0x4088 - regStatsBase) / 4
	statGOTCL  = (0x4090 - regStatsBase) / 4
	statRUC    = (0x40a4 - regStatsBase) / 4
	statROC    = (0x40ac - regStatsBase) / 4
	statTORL   = (0x40c0 - regStatsBase) / 4
	statTOTL   = (0x40c8 - regStatsBase) / 4
	statTPR    = (0x40d0 - regStatsBase) / 4
	statTPT    = (0x40d4 - regStatsBase) / 4
	statPTC64  = (0x40d8 - regStatsBase) / 4 // six size bins follow
	statMPTC   = (0x40f0 - regStatsBase) / 4
	statBPTC   = (0x40f4 - regStatsBase) / 4
	statTSCTC  = (0x40f8 - regStatsBase) / 4
	statTSCTFC = (0x40fc - regStatsBase) / 4
)

// CTRL bits.
const (
	ctrlFD     = 1 << 0
	ctrlASDE   = 1 << 5
	ctrlSLU    = 1 << 6
	ctrlSpd1G  = 2 << 8
	ctrlRST    = 1 << 26
	ctrlVME    = 1 << 30
	ctrlPHYRST = 1 << 31
)

// STATUS bits: full duplex, link up, 1000 Mb/s.
const (
	statusFD      = 1 << 0
	statusLU      = 1 << 1
	statusSpeed1G = 2 << 6
)

// EECD bits.
const (
	eecdSK   = 1 << 0
	eecdCS   = 1 << 1
	eecdDI   = 1 << 2
	eecdDO   = 1 << 3
	eecdREQ  = 1 << 6
	eecdGNT  = 1 << 7
	eecdPRES = 1 << 8
	// eecdWritable are the bits the driver drives; DO, GNT and PRES
	// are the device's.
	eecdWritable = eecdSK | eecdCS | eecdDI | eecdREQ | 3<<4
)

// EERD bits.
const (
	eerdStart     = 1 << 0
	eerdDone      = 1 << 4
	eerdAddrShift = 8
	eerdDataShift = 16
)

// MDIC fields.
const (
	mdicRegShift = 16
	mdicPHYShift = 21
	mdicOpWrite  = 1 << 26
	mdicOpRead   = 2 << 26
	mdicReady    = 1 << 28
	mdicIE       = 1 << 29
	mdicError    = 1 << 30
)

// Interrupt causes (ICR, ICS, IMS, IMC).
const (
	icrTXDW   = 1 << 0
	icrTXQE   = 1 << 1
	icrLSC    = 1 << 2
	icrRXDMT0 = 1 << 4
	icrRXO    = 1 << 6
	icrRXT0   = 1 << 7
	icrMDAC   = 1 << 9
	icrMask   = 0x0001_f6df // causes an 82540 defines
)

// RCTL bits.
const (
	rctlEN     = 1 << 1
	rctlUPE    = 1 << 3
	rctlMPE    = 1 << 4
	rctlLPE    = 1 << 5
	rctlRDMTS  = 3 << 8
	rctlMO     = 3 << 12
	rctlBAM    = 1 << 15
	rctlBSIZE  = 3 << 16
	rctlVFE    = 1 << 18
	rctlBSEX   = 1 << 25
	rctlSECRC  = 1 << 26
	rctlRDMTSh = 8
	rctlMOSh   = 12
	rctlBSIZEh = 16
)

// TCTL bits.
const tctlEN = 1 << 1

// RXCSUM bits.
const rxcsumTUOFL = 1 << 9

// Receive descriptor status and error bits.
const (
	rxdDD    = 1 << 0
	rxdEOP   = 1 << 1
	rxdIXSM  = 1 << 2
	rxdVP    = 1 << 3
	rxdTCPCS = 1 << 5
	rxdErrRX = 1 << 7 // RXE, in the errors byte
)

// Transmit descriptor command bits (legacy CMD, data descriptor DCMD,
// context TUCMD share these positions).
const (
	txdEOP  = 1 << 0
	txdIC   = 1 << 2 // legacy: insert checksum
	txdTSE  = 1 << 2 // extended: TCP segmentation
	txdRS   = 1 << 3
	txdDEXT = 1 << 5
	txdVLE  = 1 << 6
	txdIDE  = 1 << 7

	tucmdTCP = 1 << 0 // context: TCP (else UDP)
	tucmdIP  = 1 << 1 // context: IPv4 (else IPv6)

	poptsIXSM = 1 << 0
	poptsTXSM = 1 << 1

	dtypContext = 0
	dtypData    = 1

	txdStatusDD = 1 << 0
)

// descSize is the size of every receive and transmit descriptor.
const descSize = 16
