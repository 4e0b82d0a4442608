// Package cmos emulates the PC's MC146818 real-time clock and its 128 bytes
// of battery-backed CMOS RAM behind ports 0x70 (index, with the NMI mask
// in bit 7) and 0x71 (data).
//
// The clock reads the host's clock plus an offset the guest sets by
// writing the time registers, in BCD or binary and 12- or 24-hour format
// as register B selects. The CMOS RAM also reports the RAM size the way
// PC firmware does (bytes 0x15-0x18, 0x30-0x31, 0x34-0x35, 0x5b-0x5d).
//
// Without timers of its own the device raises no interrupts: register C's
// update-ended flag is computed when C is read, but IRQ 8 is never
// asserted, so periodic, alarm and update interrupts are not available
// (Linux's rtc-cmos then falls back to polling; hwclock works).
package cmos

import (
	"sync"
	"time"

	"github.com/viovmm/vio/bus"
)

// Where the PC has it.
const (
	PortAddr = 0x70
	IRQ      = 8 // never raised; see the package comment
)

// Port offsets from PortAddr.
const (
	RegIndex = 0
	RegData  = 1
	Size     = 2 // ports 0x70 and 0x71
)

// CMOS RAM indices.
const (
	Seconds      = 0x00
	SecondsAlarm = 0x01
	Minutes      = 0x02
	MinutesAlarm = 0x03
	Hours        = 0x04
	HoursAlarm   = 0x05
	Weekday      = 0x06
	DayOfMonth   = 0x07
	Month        = 0x08
	Year         = 0x09
	RegA         = 0x0a
	RegB         = 0x0b
	RegC         = 0x0c
	RegD         = 0x0d
	BaseMemLo    = 0x15 // base memory in KiB
	ExtMemLo     = 0x17 // memory from 1 MiB in KiB, up to 0xffff
	ExtMem2Lo    = 0x30 // the same, as POST reports it
	Century      = 0x32 // the index ACPI's FADT names by default
	MemAbove16M  = 0x34 // memory from 16 MiB to 4 GiB in 64 KiB units, up to 0xffff
	MemAbove4G   = 0x5b // memory above 4 GiB in 64 KiB units, 3 bytes
	checksumHi   = 0x2e // checksum of 0x10..0x2d, big-endian
	ramSize      = 128
)

// Register A, B, C and D bits.
const (
	AUIP   = 1 << 7 // update in progress
	BSet   = 1 << 7 // updates halted while the time is set
	BPIE   = 1 << 6
	BAIE   = 1 << 5
	BUIE   = 1 << 4
	BDM    = 1 << 2 // binary (not BCD) data mode
	B24h   = 1 << 1
	CIRQF  = 1 << 7
	CAF    = 1 << 5
	CUF    = 1 << 4
	DVRT   = 1 << 7 // valid RAM and time
	hourPM = 0x80
)

// uipWindow is how long before each second boundary UIP reads 1: the
// MC146818 sets it 244 us before an update cycle.
const uipWindow = 244 * time.Microsecond

// Config describes the machine the CMOS belongs to.
type Config struct {
	// Now is the host clock; nil means time.Now. Tests inject a fake.
	Now func() time.Time
	// Location is the time zone the RTC keeps; nil means UTC, which is
	// what Linux assumes unless told otherwise.
	Location *time.Location
	// LowMem and HighMem are the bytes of guest RAM below and above
	// 4 GiB (see arch/x86's RAMLayout), for the memory-size bytes.
	LowMem, HighMem uint64
}

// CMOS is the RTC and its RAM. Create it with New.
type CMOS struct {
	now func() time.Time
	loc *time.Location

	mu     sync.Mutex
	index  uint8
	nmiOff bool
	ram    [ramSize]byte
	offset time.Duration // guest time = host time + offset
	// lastC is the host second at the last read of register C, to
	// compute its update-ended flag.
	lastC int64
}

var _ bus.Device = (*CMOS)(nil)

// New returns a CMOS in the state firmware leaves it: 24-hour BCD mode,
// the normal 32.768 kHz divider, time = host time.
func New(cfg Config) *CMOS {
	c := &CMOS{now: cfg.Now, loc: cfg.Location}
	if c.now == nil {
		c.now = time.Now
	}
	if c.loc == nil {
		c.loc = time.UTC
	}
	c.ram[RegA] = 0x26 // divider 010 (32.768 kHz), rate 0110 (1024 Hz)
	c.ram[RegB] = B24h
	c.ram[RegD] = DVRT
	c.lastC = c.now().Unix()
	c.setMemory(cfg.LowMem, cfg.HighMem)
	return c
}

func (c *CMOS) setMemory(low, high uint64) {
	put16 := func(i int, v uint64) {
		v = min(v, 0xffff)
		c.ram[i], c.ram[i+1] = byte(v), byte(v>>8)
	}
	put16(BaseMemLo, 640)
	var ext uint64
	if low > 1<<20 {
		ext = (low - 1<<20) >> 10
	}
	put16(ExtMemLo, ext)
	put16(ExtMem2Lo, ext)
	var above16 uint64
	if low > 16<<20 {
		above16 = (low - 16<<20) >> 16
	}
	put16(MemAbove16M, above16)
	h := min(high>>16, 0xffffff)
	c.ram[MemAbove4G], c.ram[MemAbove4G+1], c.ram[MemAbove4G+2] = byte(h), byte(h>>8), byte(h>>16)
	var sum uint16
	for i := 0x10; i < checksumHi; i++ {
		sum += uint16(c.ram[i])
	}
	c.ram[checksumHi], c.ram[checksumHi+1] = byte(sum>>8), byte(sum)
}

// NMIMasked reports whether the guest has disabled NMIs through bit 7 of
// the index port.
func (c *CMOS) NMIMasked() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nmiOff
}

func (c *CMOS) binary() bool { return c.ram[RegB]&BDM != 0 }

func (c *CMOS) enc(v int) byte {
	if c.binary() {
		return byte(v)
	}
	return byte(v/10<<4 | v%10)
}

func (c *CMOS) dec(b byte) int {
	if c.binary() {
		return int(b)
	}
	// Garbage nibbles decode to garbage numbers; time.Date normalises.
	return int(b>>4)*10 + int(b&0x0f)
}

func (c *CMOS) encHour(h int) byte {
	if c.ram[RegB]&B24h != 0 {
		return c.enc(h)
	}
	h12 := h % 12
	if h12 == 0 {
		h12 = 12
	}
	v := c.enc(h12)
	if h >= 12 {
		v |= hourPM
	}
	return v
}

func (c *CMOS) decHour(b byte) int {
	if c.ram[RegB]&B24h != 0 {
		return c.dec(b)
	}
	h := c.dec(b&^hourPM) % 12
	if b&hourPM != 0 {
		h += 12
	}
	return h
}

func (c *CMOS) guestTime() time.Time { return c.now().Add(c.offset).In(c.loc) }

// snapshot stores the current guest time in the time registers.
func (c *CMOS) snapshot() {
	t := c.guestTime()
	c.ram[Seconds] = c.enc(t.Second())
	c.ram[Minutes] = c.enc(t.Minute())
	c.ram[Hours] = c.encHour(t.Hour())
	c.ram[Weekday] = c.enc(int(t.Weekday()) + 1)
	c.ram[DayOfMonth] = c.enc(t.Day())
	c.ram[Month] = c.enc(int(t.Month()))
	c.ram[Year] = c.enc(t.Year() % 100)
	c.ram[Century] = c.enc(t.Year() / 100)
}

// adopt makes the time registers the new guest time.
func (c *CMOS) adopt() {
	year := c.dec(c.ram[Century])*100 + c.dec(c.ram[Year])
	t := time.Date(year, time.Month(c.dec(c.ram[Month])), c.dec(c.ram[DayOfMonth]),
		c.decHour(c.ram[Hours]), c.dec(c.ram[Minutes]), c.dec(c.ram[Seconds]), 0, c.loc)
	// Keep the host's sub-second phase so the guest's seconds tick
	// when the host's do.
	now := c.now()
	c.offset = t.Sub(now.Truncate(time.Second))
}

func isTimeReg(i uint8) bool {
	switch i {
	case Seconds, Minutes, Hours, Weekday, DayOfMonth, Month, Year, Century:
		return true
	}
	return false
}

// Read implements bus.Device.
func (c *CMOS) Read(offset uint64, data []byte) {
	if len(data) != 1 {
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if offset == RegIndex {
		// The index port is write-only on a PC; reads float.
		data[0] = 0xff
		return
	}
	i := c.index
	switch {
	case isTimeReg(i) && c.ram[RegB]&BSet == 0:
		c.snapshot()
		data[0] = c.ram[i]
	case i == RegA:
		v := c.ram[RegA] &^ AUIP
		now := c.now()
		if c.ram[RegB]&BSet == 0 && time.Duration(now.Nanosecond()) >= time.Second-uipWindow {
			v |= AUIP
		}
		data[0] = v
	case i == RegC:
		var v uint8
		now := c.now().Unix()
		if now != c.lastC {
			v |= CUF // at least one update cycle ended since the last read
		}
		c.lastC = now
		if c.alarmMatches() {
			v |= CAF
		}
		if v&c.ram[RegB]&(BUIE|BAIE) != 0 {
			v |= CIRQF
		}
		data[0] = v
	default:
		data[0] = c.ram[i]
	}
}

// alarmMatches reports whether the guest time matches the alarm, with
// values 0xc0-0xff as "don't care".
func (c *CMOS) alarmMatches() bool {
	t := c.guestTime()
	m := func(alarm byte, v byte) bool { return alarm >= 0xc0 || alarm == v }
	return m(c.ram[SecondsAlarm], c.enc(t.Second())) && m(c.ram[MinutesAlarm], c.enc(t.Minute())) &&
		m(c.ram[HoursAlarm], c.encHour(t.Hour()))
}

// Write implements bus.Device.
func (c *CMOS) Write(offset uint64, data []byte) {
	if len(data) != 1 {
		return
	}
	v := data[0]
	c.mu.Lock()
	defer c.mu.Unlock()
	if offset == RegIndex {
		c.index = v & 0x7f
		c.nmiOff = v&0x80 != 0
		return
	}
	i := c.index
	switch {
	case isTimeReg(i):
		if c.ram[RegB]&BSet == 0 {
			// Setting one field with the clock running: the
			// others keep their current values.
			c.snapshot()
			c.ram[i] = v
			c.adopt()
		} else {
			c.ram[i] = v
		}
	case i == RegA:
		c.ram[RegA] = v &^ AUIP
	case i == RegB:
		old := c.ram[RegB]
		if v&BSet != 0 {
			v &^= BUIE // the datasheet: SET clears UIE
		}
		if old&BSet == 0 && v&BSet != 0 {
			c.snapshot() // freeze the registers in the old format
		}
		if old&BSet != 0 && v&BSet == 0 {
			// Decode in the format the guest wrote them in.
			c.adopt()
		}
		c.ram[RegB] = v
	case i == RegC, i == RegD:
		// Read-only.
	default:
		c.ram[i] = v
	}
}
