package e1000

// eepromWords is the size of the 82540EM's Microwire EEPROM (EECD.SIZE
// clear: 64 words, 6 address bits).
const (
	eepromWords    = 64
	eepromAddrBits = 6
	eepromOpBits   = 3
	eepromOpRead   = 0b110
	// eepromSum is what words 0..0x3F add up to (manual 5.6.1); the
	// driver refuses a device whose EEPROM does not.
	eepromSum = 0xbaba
)

// Words of the EEPROM image that the driver reads.
const (
	eeMAC         = 0x00 // three words, little-endian byte pairs
	eeCompat      = 0x03
	eeIDLED       = 0x04
	eeInitCtrl1   = 0x0a
	eeSubsystemID = 0x0b
	eeSubVendorID = 0x0c
	eeDeviceID    = 0x0d
	eeVendorID    = 0x0e
	eeInitCtrl2   = 0x0f // bits 13:12 flow control: 0, none
	eeChecksum    = 0x3f
)

// eepromImage returns the EEPROM contents for mac: identity words matching
// the PCI header, no flow control, no wake-up, and the checksum word.
func eepromImage(mac [6]byte) [eepromWords]uint16 {
	var w [eepromWords]uint16
	for i := range 3 {
		w[eeMAC+i] = uint16(mac[2*i]) | uint16(mac[2*i+1])<<8
	}
	w[eeIDLED] = 0xffff // "use the default LED configuration"
	w[eeSubsystemID] = SubsystemID
	w[eeSubVendorID] = VendorID
	w[eeDeviceID] = DeviceID
	w[eeVendorID] = VendorID
	var sum uint16
	for _, v := range w[:eeChecksum] {
		sum += v
	}
	w[eeChecksum] = eepromSum - sum
	return w
}

// microwire is the serial EEPROM interface behind EECD, which the driver
// bit-bangs: with CS high it presents DI and raises SK for each bit of the
// 3-bit opcode and 6-bit address, then raises SK sixteen times and samples
// DO after each rising edge. A READ keeps shifting out the following words
// while clocks continue. Dropping CS ends the command. Only READ is
// implemented; writes to the EEPROM are ignored, so the image never
// changes.
type microwire struct {
	in      uint32 // opcode and address bits shifted in so far
	nIn     int
	reading bool
	word    int // word being shifted out
	bit     int // next bit of word to present (15..0), -1 before the first clock
	do      bool
	lastSK  bool
}

// write applies an EECD write (the driver-controlled bits).
func (m *microwire) write(eecd uint32, image *[eepromWords]uint16) {
	sk := eecd&eecdSK != 0
	rising := sk && !m.lastSK
	m.lastSK = sk
	if eecd&eecdCS == 0 {
		*m = microwire{lastSK: sk}
		return
	}
	if !rising {
		return
	}
	if m.reading {
		if m.bit < 0 {
			m.bit = 15
		} else if m.bit--; m.bit < 0 {
			m.bit = 15
			m.word = (m.word + 1) % eepromWords
		}
		m.do = image[m.word]>>m.bit&1 != 0
		return
	}
	if m.nIn >= eepromOpBits+eepromAddrBits {
		return // an opcode other than READ: ignore clocks until CS drops
	}
	m.in = m.in<<1 | (eecd>>2)&1
	m.nIn++
	if m.nIn == eepromOpBits+eepromAddrBits && m.in>>eepromAddrBits == eepromOpRead {
		m.reading = true
		m.word = int(m.in & (1<<eepromAddrBits - 1))
		m.bit = -1
		m.do = false // the dummy zero before D15
	}
}

// PHY registers (IEEE 802.3 clause 22 and the Marvell 88E1011's own).
const (
	phyCtrl       = 0x00
	phyStatus     = 0x01
	phyID1        = 0x02
	phyID2        = 0x03
	phyANAdv      = 0x04
	phyLPAbility  = 0x05
	phyANExp      = 0x06
	phy1000Ctrl   = 0x09
	phy1000Status = 0x0a
	phyExtStatus  = 0x0f
	phySpecCtrl   = 0x10
	phySpecStatus = 0x11
	phyExtSpecCtl = 0x14

	phyAddr = 1 // the driver's hw->phy_addr for 82540

	phyCtrlReset      = 1 << 15
	phyCtrlRestartAN  = 1 << 9
	phyStatusLink     = 1 << 2
	phyStatusANDone   = 1 << 5
	phyDefaultCtrl    = 0x1140 // autoneg on, full duplex, 1000 Mb/s
	phyDefaultStatus  = 0x796d // capabilities, autoneg done, link up
	phyDefaultANAdv   = 0x0de1
	phyDefaultLP      = 0x45e1 // partner: 10/100 both duplexes, pause, ack
	phyDefault1000Sts = 0x3c00 // partner 1000 FD/HD, receivers OK
	phyDefaultSpecSts = 0xac00 // 1000 Mb/s, full duplex, resolved, link
)

// phy is the Marvell 88E1011 PHY behind MDIC, with an autonegotiated
// 1000 Mb/s full-duplex link that is always up.
type phy struct {
	regs [32]uint16
}

func (p *phy) reset() {
	p.regs = [32]uint16{}
	p.regs[phyCtrl] = phyDefaultCtrl
	p.regs[phyStatus] = phyDefaultStatus
	p.regs[phyID1] = 0x0141 // Marvell: M88E1011_I_PHY_ID 0x01410C20
	p.regs[phyID2] = 0x0c20
	p.regs[phyANAdv] = phyDefaultANAdv
	p.regs[phyLPAbility] = phyDefaultLP
	p.regs[phyANExp] = 0x0001
	p.regs[phy1000Ctrl] = 0x0e00
	p.regs[phy1000Status] = phyDefault1000Sts
	p.regs[phyExtStatus] = 0x3000
	p.regs[phySpecCtrl] = 0x0068
	p.regs[phySpecStatus] = phyDefaultSpecSts
	p.regs[phyExtSpecCtl] = 0x0d60
}

// read and write serve one MDIO access.
func (p *phy) read(reg uint32) uint16 { return p.regs[reg&31] }

func (p *phy) write(reg uint32, v uint16) {
	switch reg &= 31; reg {
	case phyStatus, phyID1, phyID2, phyLPAbility, phyANExp, phy1000Status, phyExtStatus, phySpecStatus:
		// read-only
	case phyCtrl:
		if v&phyCtrlReset != 0 {
			p.reset()
			return
		}
		// Autonegotiation completes at once; both self-clearing bits
		// read back as zero.
		p.regs[phyCtrl] = v &^ (phyCtrlReset | phyCtrlRestartAN)
	default:
		p.regs[reg] = v
	}
}
