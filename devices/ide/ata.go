package ide

import "encoding/binary"

// ATA command opcodes.
const (
	cmdNOP             = 0x00
	cmdDeviceReset     = 0x08
	cmdReadSectors     = 0x20
	cmdReadSectorsNR   = 0x21
	cmdReadSectorsExt  = 0x24
	cmdReadDMAExt      = 0x25
	cmdReadMultExt     = 0x29
	cmdWriteSectors    = 0x30
	cmdWriteSectorsNR  = 0x31
	cmdWriteSectorsExt = 0x34
	cmdWriteDMAExt     = 0x35
	cmdWriteMultExt    = 0x39
	cmdVerify          = 0x40
	cmdVerifyNR        = 0x41
	cmdVerifyExt       = 0x42
	cmdSeek            = 0x70
	cmdDiagnose        = 0x90
	cmdInitParams      = 0x91
	cmdPacket          = 0xa0
	cmdIdentifyPacket  = 0xa1
	cmdReadMult        = 0xc4
	cmdWriteMult       = 0xc5
	cmdSetMult         = 0xc6
	cmdReadDMA         = 0xc8
	cmdReadDMANR       = 0xc9
	cmdWriteDMA        = 0xca
	cmdWriteDMANR      = 0xcb
	cmdStandbyImm      = 0xe0
	cmdIdleImm         = 0xe1
	cmdStandby         = 0xe2
	cmdIdle            = 0xe3
	cmdCheckPower      = 0xe5
	cmdSleep           = 0xe6
	cmdFlush           = 0xe7
	cmdFlushExt        = 0xea
	cmdIdentify        = 0xec
	cmdSetFeatures     = 0xef
)

// Geometry reported for CHS addressing (and the obsolete IDENTIFY words).
const (
	heads   = 16
	sectors = 63
	maxCyls = 16383
)

// command executes an ATA command written to the selected drive.
func (d *drive) command(cmd byte) {
	d.op, d.buf, d.pos = opNone, nil, 0
	d.err = 0
	if d.kind == CDROM {
		d.atapiCommand(cmd)
		return
	}
	switch cmd {
	case cmdReadSectors, cmdReadSectorsNR:
		d.pioRead(false, false)
	case cmdReadSectorsExt:
		d.pioRead(true, false)
	case cmdReadMult:
		d.pioRead(false, true)
	case cmdReadMultExt:
		d.pioRead(true, true)
	case cmdWriteSectors, cmdWriteSectorsNR:
		d.pioWrite(false, false)
	case cmdWriteSectorsExt:
		d.pioWrite(true, false)
	case cmdWriteMult:
		d.pioWrite(false, true)
	case cmdWriteMultExt:
		d.pioWrite(true, true)
	case cmdReadDMA, cmdReadDMANR:
		d.dma(false, false)
	case cmdReadDMAExt:
		d.dma(true, false)
	case cmdWriteDMA, cmdWriteDMANR:
		d.dma(false, true)
	case cmdWriteDMAExt:
		d.dma(true, true)
	case cmdVerify, cmdVerifyNR, cmdVerifyExt:
		lba, n := d.addr(cmd == cmdVerifyExt)
		if !d.inRange(lba, n) {
			d.fail(errIDNF)
			return
		}
		d.complete()
	case cmdIdentify:
		d.buf = d.identify()
		d.op = opIdentify
		d.status = stDRDY | stDSC | stDRQ
		d.ch.raise()
	case cmdSetFeatures:
		if !d.setFeatures() {
			d.fail(errABRT)
			return
		}
		d.complete()
	case cmdSetMult:
		n := int(d.nsect[0])
		if n > maxMult || n&(n-1) != 0 {
			d.fail(errABRT)
			return
		}
		d.mult = n
		d.complete()
	case cmdFlush, cmdFlushExt:
		d.status = stDRDY | stDSC | stBSY
		d.ch.submit(&job{drive: d, flush: true})
	case cmdDiagnose:
		d.signature()
		d.err = 0x01
		d.complete()
	case cmdCheckPower:
		d.nsect[0] = 0xff // active or idle
		d.complete()
	case cmdSeek, cmdInitParams, cmdStandbyImm, cmdIdleImm, cmdStandby, cmdIdle, cmdSleep:
		d.complete()
	default:
		// NOP, DEVICE RESET, IDENTIFY PACKET DEVICE, PACKET and anything
		// unknown: an ATA disk aborts them.
		d.fail(errABRT)
	}
}

// addr decodes the starting sector and count of a read/write command.
// It returns lba -1 for an invalid CHS address.
func (d *drive) addr(ext bool) (lba, count int64) {
	if ext {
		lba = int64(d.lbal[0]) | int64(d.lbam[0])<<8 | int64(d.lbah[0])<<16 |
			int64(d.lbal[1])<<24 | int64(d.lbam[1])<<32 | int64(d.lbah[1])<<40
		count = int64(d.nsect[0]) | int64(d.nsect[1])<<8
		if count == 0 {
			count = 65536
		}
		return lba, count
	}
	count = int64(d.nsect[0])
	if count == 0 {
		count = 256
	}
	if d.device&devLBA != 0 {
		lba = int64(d.lbal[0]) | int64(d.lbam[0])<<8 | int64(d.lbah[0])<<16 | int64(d.device&0xf)<<24
		return lba, count
	}
	cyl := int64(d.lbam[0]) | int64(d.lbah[0])<<8
	head := int64(d.device & 0xf)
	sect := int64(d.lbal[0])
	if sect == 0 || sect > sectors || head >= heads {
		return -1, count
	}
	return (cyl*heads+head)*sectors + sect - 1, count
}

func (d *drive) inRange(lba, n int64) bool {
	return lba >= 0 && n >= 0 && lba <= d.sectors && n <= d.sectors-lba
}

// pioRead starts READ SECTORS (EXT) or READ MULTIPLE (EXT).
func (d *drive) pioRead(ext, multiple bool) {
	if !d.setupPIO(ext, multiple) {
		return
	}
	d.op = opRead
	d.readBlock()
}

// pioWrite starts WRITE SECTORS (EXT) or WRITE MULTIPLE (EXT): the first
// block is requested with DRQ and no interrupt.
func (d *drive) pioWrite(ext, multiple bool) {
	if d.ro {
		d.fail(errABRT)
		return
	}
	if !d.setupPIO(ext, multiple) {
		return
	}
	d.op = opWrite
	d.startBlock(true)
	d.status = stDRDY | stDSC | stDRQ
}

func (d *drive) setupPIO(ext, multiple bool) bool {
	lba, n := d.addr(ext)
	if multiple && d.mult == 0 {
		d.fail(errABRT)
		return false
	}
	if !d.inRange(lba, n) {
		d.fail(errIDNF)
		return false
	}
	d.lba, d.left, d.blk = lba, n, 1
	if multiple {
		d.blk = int64(d.mult)
	}
	return true
}

// dma starts READ/WRITE DMA (EXT); the transfer runs when the bus master
// is started (before or after the command).
func (d *drive) dma(ext, write bool) {
	if write && d.ro {
		d.fail(errABRT)
		return
	}
	lba, n := d.addr(ext)
	if !d.inRange(lba, n) {
		d.fail(errIDNF)
		return
	}
	d.status = stDRDY | stDSC | stBSY
	d.ch.submit(&job{drive: d, write: write, off: lba * sectorSize, n: n * sectorSize, be: d.be})
}

// setFeatures applies SET FEATURES; false aborts the command.
func (d *drive) setFeatures() bool {
	switch d.feature[0] {
	case 0x02:
		d.wcache = true
	case 0x82:
		d.wcache = false
	case 0x03:
		m := d.nsect[0]
		switch {
		case m <= 0x01: // PIO default mode, IORDY on or off
			d.pioMode = 0
		case m >= 0x08 && m <= 0x0c:
			d.pioMode = m
		case m >= 0x20 && m <= 0x22, m >= 0x40 && m <= 0x45:
			d.dmaMode = m
		default:
			return false
		}
	case 0x55, 0xaa, 0x66, 0xcc: // read look-ahead, reverting to defaults
	default:
		return false
	}
	return true
}

// identify builds the 256 words of IDENTIFY DEVICE.
func (d *drive) identify() []byte {
	var w [256]uint16
	cyls := min(d.sectors/(heads*sectors), maxCyls)
	w[0] = 0x0040 // fixed device
	w[1] = uint16(cyls)
	w[3] = heads
	w[6] = sectors
	putString(w[10:20], d.serial)
	putString(w[23:27], "1.0")
	putString(w[27:47], d.model)
	w[47] = 0x8000 | maxMult
	w[49] = 1<<11 | 1<<9 | 1<<8 // IORDY, LBA, DMA
	w[50] = 0x4000
	w[51], w[52] = 0x200, 0x200
	w[53] = 0x7 // words 54-58, 64-70 and 88 are valid
	w[54], w[55], w[56] = uint16(cyls), heads, sectors
	chs := uint32(cyls * heads * sectors)
	w[57], w[58] = uint16(chs), uint16(chs>>16)
	if d.mult != 0 {
		w[59] = 0x100 | uint16(d.mult)
	}
	lba28 := uint32(min(d.sectors, 0x0fffffff))
	w[60], w[61] = uint16(lba28), uint16(lba28>>16)
	w[63] = 0x07 // multiword DMA 0-2
	if m := d.dmaMode; m >= 0x20 && m <= 0x22 {
		w[63] |= 1 << (8 + m - 0x20)
	}
	w[64] = 0x03 // PIO 3 and 4
	w[65], w[66], w[67], w[68] = 120, 120, 120, 120
	w[80] = 0xf0 // ATA/ATAPI-4 to -7
	w[81] = 0x16
	w[82] = 1 << 5                        // write cache
	w[83] = 1<<14 | 1<<13 | 1<<12 | 1<<10 // FLUSH CACHE EXT, FLUSH CACHE, LBA48
	w[84] = 1 << 14
	w[85] = 0
	if d.wcache {
		w[85] |= 1 << 5
	}
	w[86] = 1<<13 | 1<<12 | 1<<10
	w[87] = 1 << 14
	w[88] = 0x3f // UDMA 0-5
	if m := d.dmaMode; m >= 0x40 && m <= 0x45 {
		w[88] |= 1 << (8 + m - 0x40)
	}
	w[93] = 1<<14 | 1<<13 | 1 // 80-wire cable detected, device 0 passed
	n := uint64(d.sectors)
	w[100], w[101], w[102], w[103] = uint16(n), uint16(n>>16), uint16(n>>32), uint16(n>>48)
	return identifyBytes(&w)
}

// putString stores s in IDENTIFY's byte order (the first character in
// the high byte of each word), padded with spaces.
func putString(w []uint16, s string) {
	b := make([]byte, 2*len(w))
	for i := range b {
		b[i] = ' '
	}
	copy(b, s)
	for i := range w {
		w[i] = uint16(b[2*i])<<8 | uint16(b[2*i+1])
	}
}

// identifyBytes serializes IDENTIFY data with its integrity word: A5h in
// the low byte of word 255 and a checksum making all 512 bytes sum to 0.
func identifyBytes(w *[256]uint16) []byte {
	w[255] = 0xa5
	b := make([]byte, 512)
	for i, v := range w {
		binary.LittleEndian.PutUint16(b[2*i:], v)
	}
	var sum byte
	for _, v := range b[:511] {
		sum += v
	}
	b[511] = -sum
	return b
}
