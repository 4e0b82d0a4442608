// Package i8042 emulates the PC's 8042 keyboard controller, as much as
// Linux needs: the controller commands its i8042 driver issues while
// probing (read/write the command byte, self-tests, port enable/disable,
// output port), a keyboard that answers the atkbd driver's commands, and
// the reset line, which is how Linux reboots with "reboot=k". There is no
// auxiliary (mouse) port: the controller says so promptly (see auxLoop)
// rather than letting the driver time out.
//
// It also holds PortB, the system control port at 0x61, whose timer-2
// output bit PIT calibration code polls.
package i8042

import (
	"sync"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/irq"
)

// Port addresses on the PC.
const (
	DataPortAddr    = 0x60
	PortBAddr       = 0x61
	CommandPortAddr = 0x64
	IRQKeyboard     = 1
)

// Status register bits.
const (
	StatusOBF     = 1 << 0 // output buffer full: a byte waits at 0x60
	StatusIBF     = 1 << 1 // input buffer full (never: writes are taken at once)
	StatusSys     = 1 << 2 // system flag, from the command byte
	StatusCmd     = 1 << 3 // last write went to 0x64
	StatusUnlock  = 1 << 4 // keyboard not inhibited
	StatusAuxData = 1 << 5 // the waiting byte is from the aux port
)

// Command byte (CTR) bits.
const (
	CTRKbdInt  = 1 << 0
	CTRAuxInt  = 1 << 1
	CTRSys     = 1 << 2
	CTRKbdDis  = 1 << 4
	CTRAuxDis  = 1 << 5
	CTRXlate   = 1 << 6
	defaultCTR = CTRKbdInt | CTRSys | CTRXlate | CTRAuxDis
)

// Controller commands (written to 0x64).
const (
	CmdReadCTR      = 0x20
	CmdWriteCTR     = 0x60
	CmdAuxDisable   = 0xa7
	CmdAuxEnable    = 0xa8
	CmdAuxTest      = 0xa9
	CmdSelfTest     = 0xaa
	CmdKbdTest      = 0xab
	CmdKbdDisable   = 0xad
	CmdKbdEnable    = 0xae
	CmdReadOutPort  = 0xd0
	CmdWriteOutPort = 0xd1
	CmdWriteKbdOut  = 0xd2
	CmdWriteAuxOut  = 0xd3 // "AUX loop" to Linux
	CmdWriteAux     = 0xd4
	CmdPulseReset   = 0xfe // pulse output line 0 (reset) low

	SelfTestOK = 0x55
)

// Output port bits.
const (
	outPortReset = 1 << 0 // 0 holds the CPU in reset
	outPortA20   = 1 << 1
)

// Keyboard replies.
const (
	kbdACK      = 0xfa
	kbdBATOK    = 0xaa
	kbdEcho     = 0xee
	kbdResend   = 0xfe
	auxTestFail = 0x01 // "clock line stuck low": Linux concludes no aux port
)

// maxQueue bounds the output queue: the guest can make the keyboard talk
// (each command yields at most three bytes) but not grow memory.
const maxQueue = 16

// Config wires the controller to the machine.
type Config struct {
	// Reset is called when the guest pulses the reset line (command
	// 0xfe, or an output port write with bit 0 clear). It runs on the
	// vCPU thread that did the write, with no lock held; it should
	// only signal the VM loop to reboot, not tear the VM down itself.
	Reset func()
	// KbdIRQ is IRQ 1. It gets a rising edge for every keyboard byte
	// made available while the command byte enables the interrupt.
	KbdIRQ irq.Line
}

type outByte struct {
	b   byte
	aux bool
}

// Controller is the 8042. Register DataPort at 0x60 and CommandPort at
// 0x64, one byte each.
type Controller struct {
	reset func()
	irq   irq.Line

	mu      sync.Mutex
	ctr     uint8
	outPort uint8
	lastCmd bool  // last write was a command
	pending uint8 // controller command awaiting its data byte, or 0
	kbdArg  uint8 // keyboard command awaiting its argument, or 0
	scanSet uint8 // keyboard scan code set (1-3)
	queue   []outByte
	level   bool
}

// New returns a controller in the state firmware leaves it.
func New(cfg Config) *Controller {
	return &Controller{reset: cfg.Reset, irq: cfg.KbdIRQ, ctr: defaultCTR,
		outPort: outPortReset | outPortA20, scanSet: 2}
}

// DataPort is the device for port 0x60.
func (c *Controller) DataPort() bus.Device { return dataPort{c} }

// CommandPort is the device for port 0x64 (status on read).
func (c *Controller) CommandPort() bus.Device { return cmdPort{c} }

type dataPort struct{ c *Controller }
type cmdPort struct{ c *Controller }

var (
	_ bus.Device = dataPort{}
	_ bus.Device = cmdPort{}
)

func (p dataPort) Read(_ uint64, data []byte) {
	if len(data) == 1 {
		data[0] = p.c.readData()
		return
	}
	fill(data)
}

func (p dataPort) Write(_ uint64, data []byte) {
	if len(data) == 1 {
		p.c.writeData(data[0])
	}
}

func (p cmdPort) Read(_ uint64, data []byte) {
	if len(data) == 1 {
		data[0] = p.c.status()
		return
	}
	fill(data)
}

func (p cmdPort) Write(_ uint64, data []byte) {
	if len(data) == 1 {
		p.c.writeCommand(data[0])
	}
}

func fill(data []byte) {
	for i := range data {
		data[i] = 0xff
	}
}

func (c *Controller) push(b byte, aux bool) {
	if len(c.queue) < maxQueue {
		c.queue = append(c.queue, outByte{b, aux})
	}
}

// update drives IRQ 1: high while a keyboard byte waits and the command
// byte enables the interrupt. readData lowers it first so each byte gets
// its own edge on the (edge-triggered) ISA line.
func (c *Controller) update() {
	lvl := len(c.queue) > 0 && !c.queue[0].aux && c.ctr&CTRKbdInt != 0
	if lvl != c.level && c.irq != nil {
		_ = c.irq.SetLevel(lvl)
	}
	c.level = lvl
}

func (c *Controller) status() uint8 {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := uint8(StatusUnlock)
	if c.ctr&CTRSys != 0 {
		s |= StatusSys
	}
	if c.lastCmd {
		s |= StatusCmd
	}
	if len(c.queue) > 0 {
		s |= StatusOBF
		if c.queue[0].aux {
			s |= StatusAuxData
		}
	}
	return s
}

func (c *Controller) readData() uint8 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) == 0 {
		return 0 // the last byte would still be latched; 0 is as good
	}
	b := c.queue[0].b
	c.queue = c.queue[1:]
	if c.level && c.irq != nil {
		_ = c.irq.SetLevel(false)
		c.level = false
	}
	c.update()
	return b
}

func (c *Controller) writeCommand(v uint8) {
	reset := false
	c.mu.Lock()
	c.lastCmd = true
	c.pending = 0
	switch v {
	case CmdReadCTR:
		c.push(c.ctr, false)
	case CmdWriteCTR, CmdWriteOutPort, CmdWriteKbdOut, CmdWriteAuxOut, CmdWriteAux:
		c.pending = v
	case CmdAuxDisable:
		c.ctr |= CTRAuxDis
	case CmdAuxEnable:
		c.ctr &^= CTRAuxDis
	case CmdAuxTest:
		c.push(auxTestFail, false)
	case CmdSelfTest:
		c.ctr |= CTRSys
		c.push(SelfTestOK, false)
	case CmdKbdTest:
		c.push(0x00, false)
	case CmdKbdDisable:
		c.ctr |= CTRKbdDis
	case CmdKbdEnable:
		c.ctr &^= CTRKbdDis
	case CmdReadOutPort:
		c.push(c.outPort, false)
	default:
		// 0xf0-0xff pulse output lines whose bit is 0 in the low
		// nibble; line 0 is the CPU reset.
		if v >= 0xf0 && v&1 == 0 {
			reset = true
		}
	}
	c.update()
	c.mu.Unlock()
	if reset && c.reset != nil {
		c.reset()
	}
}

func (c *Controller) writeData(v uint8) {
	reset := false
	c.mu.Lock()
	c.lastCmd = false
	cmd := c.pending
	c.pending = 0
	switch cmd {
	case CmdWriteCTR:
		c.ctr = v
	case CmdWriteOutPort:
		c.outPort = v
		reset = v&outPortReset == 0
	case CmdWriteKbdOut:
		c.push(v, false)
	case CmdWriteAuxOut:
		// Linux's "AUX loop" test expects the byte back flagged as
		// aux data. With no aux port, hand it back as keyboard data:
		// the driver sees the missing flag at once and, after the
		// failing aux test (0xa9), decides there is no mouse,
		// instead of waiting half a second for a timeout.
		c.push(v, false)
	case CmdWriteAux:
		// No aux device: the byte goes nowhere.
	default:
		c.keyboard(v)
	}
	c.update()
	c.mu.Unlock()
	if reset && c.reset != nil {
		c.reset()
	}
}

// keyboard plays an AT keyboard receiving byte v. Called with mu held.
func (c *Controller) keyboard(v uint8) {
	if arg := c.kbdArg; arg != 0 {
		c.kbdArg = 0
		switch arg {
		case 0xf0: // scan code set: 0 asks which
			if v == 0 {
				c.push(kbdACK, false)
				c.push(c.scanSet, false)
				return
			}
			if v <= 3 {
				c.scanSet = v
			}
		}
		c.push(kbdACK, false)
		return
	}
	switch v {
	case 0xed, 0xf0, 0xf3: // LEDs, scan code set, typematic: take an argument
		c.kbdArg = v
		c.push(kbdACK, false)
	case 0xee:
		c.push(kbdEcho, false)
	case 0xf2: // identify: MF2 keyboard, translated ID when XLATE is on
		c.push(kbdACK, false)
		c.push(0xab, false)
		if c.ctr&CTRXlate != 0 {
			c.push(0x41, false)
		} else {
			c.push(0x83, false)
		}
	case 0xff: // reset and self-test
		c.scanSet = 2
		c.push(kbdACK, false)
		c.push(kbdBATOK, false)
	case 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd:
		c.push(kbdACK, false)
	default:
		c.push(kbdResend, false)
	}
}

// PortB is the system control port B at 0x61: bit 0 gates PIT channel 2,
// bit 1 drives the speaker, bits 2-3 mask parity/channel checks; reads
// add the refresh toggle (bit 4) and channel 2's output (bit 5).
//
// A vmm that creates KVM's in-kernel PIT with the KVM_PIT_SPEAKER_DUMMY
// flag needs none of this: KVM then serves 0x61 itself, with channel 2's
// real output. Without that flag KVM leaves 0x61 to userspace.
type PortB struct {
	// Timer2Out, if set, reports PIT channel 2's output. Without it bit
	// 5 toggles on every read, like bit 4, so that loops polling for
	// either level (Linux's pit_calibrate_tsc waits for it to go high)
	// end promptly; calibration then fails its own checks and the
	// kernel uses another clock source to calibrate.
	Timer2Out func() bool

	mu     sync.Mutex
	v      uint8
	toggle bool
}

var _ bus.Device = (*PortB)(nil)

// Read implements bus.Device.
func (p *PortB) Read(_ uint64, data []byte) {
	if len(data) != 1 {
		fill(data)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.toggle = !p.toggle
	v := p.v & 0x0f
	if p.toggle {
		v |= 1 << 4
	}
	if p.Timer2Out != nil {
		if p.Timer2Out() {
			v |= 1 << 5
		}
	} else if p.toggle {
		v |= 1 << 5
	}
	data[0] = v
}

// Write implements bus.Device.
func (p *PortB) Write(_ uint64, data []byte) {
	if len(data) != 1 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.v = data[0] & 0x0f
}
