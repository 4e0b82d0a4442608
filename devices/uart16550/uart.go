// Package uart16550 emulates the National Semiconductor 16550A UART as found
// at the PC's COM ports (0x3f8/IRQ 4, 0x2f8/IRQ 3, ...), closely enough for
// Linux's 8250 driver to detect it as a 16550A and drive it with interrupts.
//
// The device is a state machine behind bus.Device: eight byte registers in,
// transmitted bytes out to an io.Writer, and its interrupt through an
// irq.Line. Bytes from the host enter with Enqueue, which takes only what
// the receive FIFO has room for, or WriteInput, which waits for room.
//
// Timing is idealised: a byte written to THR is transmitted at once, so the
// transmitter is always empty (LSR THRE and TEMT stay set), and the receive
// FIFO's character timeout is deemed to have elapsed as soon as the host
// stops pushing, so a partial FIFO below the trigger level raises the
// timeout interrupt (IIR 0xC) straight away instead of after four character
// times. Baud rate, word length and parity are stored and ignored.
package uart16550

import (
	"context"
	"io"
	"sync"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/irq"
)

// The PC's standard COM ports and their ISA interrupts.
const (
	COM1Addr = 0x3f8
	COM1IRQ  = 4
	COM2Addr = 0x2f8
	COM2IRQ  = 3
	COM3Addr = 0x3e8
	COM3IRQ  = 4
	COM4Addr = 0x2e8
	COM4IRQ  = 3
)

// Register offsets from the base port.
const (
	RegData = 0 // read RBR, write THR; DLL when LCR.DLAB
	RegIER  = 1 // interrupt enable; DLM when LCR.DLAB
	RegIIR  = 2 // read: interrupt identification
	RegFCR  = 2 // write: FIFO control
	RegLCR  = 3
	RegMCR  = 4
	RegLSR  = 5
	RegMSR  = 6
	RegSCR  = 7
	// Size is the number of ports the UART decodes.
	Size = 8
)

// IER bits.
const (
	IERRxData     = 1 << 0 // ERBFI: received data available (and timeout)
	IERTHRE       = 1 << 1 // ETBEI: transmitter holding register empty
	IERLineStatus = 1 << 2 // ELSI: receiver line status
	IERModem      = 1 << 3 // EDSSI: modem status
	ierMask       = 0x0f   // the 16550A has no other IER bits
)

// IIR values (low nibble) and bits.
const (
	IIRNone       = 0x01
	IIRModem      = 0x00
	IIRTHRE       = 0x02
	IIRRxData     = 0x04
	IIRLineStatus = 0x06
	IIRTimeout    = 0x0c
	IIRFIFOs      = 0xc0 // both bits set when the FIFOs are enabled
)

// FCR bits.
const (
	FCREnable  = 1 << 0
	FCRClearRx = 1 << 1
	FCRClearTx = 1 << 2
)

// LCR, MCR, LSR and MSR bits.
const (
	LCRDLAB = 1 << 7

	MCRDTR  = 1 << 0
	MCRRTS  = 1 << 1
	MCROUT1 = 1 << 2
	MCROUT2 = 1 << 3 // on a PC, gates the UART's interrupt onto the ISA line
	MCRLoop = 1 << 4
	mcrMask = 0x1f

	LSRDataReady = 1 << 0
	LSROverrun   = 1 << 1
	LSRParity    = 1 << 2
	LSRFraming   = 1 << 3
	LSRBreak     = 1 << 4
	LSRTHRE      = 1 << 5
	LSRTEMT      = 1 << 6
	lsrErrors    = LSROverrun | LSRParity | LSRFraming | LSRBreak

	MSRDCTS = 1 << 0
	MSRDDSR = 1 << 1
	MSRTERI = 1 << 2
	MSRDDCD = 1 << 3
	MSRCTS  = 1 << 4
	MSRDSR  = 1 << 5
	MSRRI   = 1 << 6
	MSRDCD  = 1 << 7
)

// FIFOSize is the depth of the 16550A's receive (and transmit) FIFO.
const FIFOSize = 16

var triggerLevels = [4]int{1, 4, 8, 14}

// hostModem is what the modem inputs read when not in loopback: the host
// side is "connected" (carrier, data set ready, clear to send), so a
// getty or a driver honouring CLOCAL-less lines or CTS flow works.
const hostModem = MSRCTS | MSRDSR | MSRDCD

// UART is one 16550A. Create it with New.
type UART struct {
	out  io.Writer
	line irq.Line
	// space gets a token (non-blocking, capacity 1) whenever the guest
	// frees receive space, to wake a WriteInput waiting for it.
	space chan struct{}

	mu      sync.Mutex // guards everything below and serialises output
	ier     uint8
	lcr     uint8
	mcr     uint8
	lsrErr  uint8 // sticky LSR error bits, cleared when LSR is read
	msr     uint8 // modem inputs (high nibble) and deltas (low nibble)
	scr     uint8
	dll     uint8
	dlm     uint8
	fifoOn  bool
	trigger int
	rx      [FIFOSize]byte
	rxHead  int
	rxLen   int
	// thrIRQ is the THRE interrupt latch: set when the holding
	// register becomes empty (always right after a write, and when
	// ETBEI is enabled), cleared by reading IIR while THRE is the
	// reported source, or by writing THR.
	thrIRQ  bool
	level   bool // what the IRQ line was last set to
	dropped uint64
}

var _ bus.Device = (*UART)(nil)

// New returns a UART in its reset state. Transmitted bytes go to out, one
// Write per byte, synchronously on the vCPU thread that wrote THR: out must
// not block for long (a file, or a pipe whose reader keeps up); wrap
// anything that might (a terminal, a socket) in an AsyncWriter.
// A failed write drops the byte; the guest cannot be told. line carries the
// interrupt (IRQ 4 for COM1); it is raised while an enabled interrupt is
// pending and MCR.OUT2 is set, as on a PC.
func New(out io.Writer, line irq.Line) *UART {
	u := &UART{out: out, line: line, space: make(chan struct{}, 1)}
	u.dll = 0x0c // 9600 baud from the 1.8432 MHz clock, like firmware leaves it
	u.trigger = 1
	u.msr = hostModem
	return u
}

func (u *UART) capacity() int {
	if u.fifoOn {
		return FIFOSize
	}
	return 1 // 16450 mode: one holding register
}

func (u *UART) iir() uint8 {
	id := uint8(IIRNone)
	switch {
	case u.ier&IERLineStatus != 0 && u.lsrErr != 0:
		id = IIRLineStatus
	case u.ier&IERRxData != 0 && u.rxLen > 0 && (!u.fifoOn || u.rxLen >= u.trigger):
		id = IIRRxData
	case u.ier&IERRxData != 0 && u.rxLen > 0:
		id = IIRTimeout
	case u.ier&IERTHRE != 0 && u.thrIRQ:
		id = IIRTHRE
	case u.ier&IERModem != 0 && u.msr&0x0f != 0:
		id = IIRModem
	}
	if u.fifoOn {
		id |= IIRFIFOs
	}
	return id
}

// update drives the IRQ line from the current state. Called with mu held.
func (u *UART) update() {
	lvl := u.iir()&IIRNone == 0 && u.mcr&MCROUT2 != 0 && u.mcr&MCRLoop == 0
	if lvl != u.level {
		u.level = lvl
		// Nothing useful to do on failure: the line's owner logs.
		_ = u.line.SetLevel(lvl)
	}
}

func (u *UART) signalSpace() {
	select {
	case u.space <- struct{}{}:
	default:
	}
}

func (u *UART) lsr() uint8 {
	v := u.lsrErr | LSRTHRE | LSRTEMT
	if u.rxLen > 0 {
		v |= LSRDataReady
	}
	return v
}

// modemInputs are the CTS/DSR/RI/DCD levels as MSR's high nibble.
func (u *UART) modemInputs() uint8 {
	if u.mcr&MCRLoop == 0 {
		return hostModem
	}
	// Loopback wires RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD.
	var v uint8
	if u.mcr&MCRRTS != 0 {
		v |= MSRCTS
	}
	if u.mcr&MCRDTR != 0 {
		v |= MSRDSR
	}
	if u.mcr&MCROUT1 != 0 {
		v |= MSRRI
	}
	if u.mcr&MCROUT2 != 0 {
		v |= MSRDCD
	}
	return v
}

func (u *UART) setModemInputs(in uint8) {
	old := u.msr & 0xf0
	d := u.msr & 0x0f
	ch := old ^ in
	if ch&MSRCTS != 0 {
		d |= MSRDCTS
	}
	if ch&MSRDSR != 0 {
		d |= MSRDDSR
	}
	if old&MSRRI != 0 && in&MSRRI == 0 { // trailing edge of ring
		d |= MSRTERI
	}
	if ch&MSRDCD != 0 {
		d |= MSRDDCD
	}
	u.msr = in | d
}

// receive appends b to the receive FIFO, or flags an overrun if full.
func (u *UART) receive(b byte) bool {
	if u.rxLen >= u.capacity() {
		u.lsrErr |= LSROverrun
		return false
	}
	u.rx[(u.rxHead+u.rxLen)%FIFOSize] = b
	u.rxLen++
	return true
}

func (u *UART) clearRx() {
	u.rxHead, u.rxLen = 0, 0
	u.signalSpace()
}

// Read implements bus.Device.
func (u *UART) Read(offset uint64, data []byte) {
	if len(data) != 1 || offset >= Size {
		// The 16550 is a byte device; wider reads see a floating bus.
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	var v uint8
	switch offset {
	case RegData:
		if u.lcr&LCRDLAB != 0 {
			v = u.dll
			break
		}
		if u.rxLen > 0 {
			v = u.rx[u.rxHead]
			u.rxHead = (u.rxHead + 1) % FIFOSize
			u.rxLen--
			u.signalSpace()
		}
	case RegIER:
		if u.lcr&LCRDLAB != 0 {
			v = u.dlm
		} else {
			v = u.ier
		}
	case RegIIR:
		v = u.iir()
		if v&0x0f == IIRTHRE {
			u.thrIRQ = false
		}
	case RegLCR:
		v = u.lcr
	case RegMCR:
		v = u.mcr
	case RegLSR:
		v = u.lsr()
		u.lsrErr = 0
	case RegMSR:
		v = u.msr
		u.msr &^= 0x0f
	case RegSCR:
		v = u.scr
	}
	data[0] = v
	u.update()
}

// Write implements bus.Device.
func (u *UART) Write(offset uint64, data []byte) {
	if len(data) != 1 || offset >= Size {
		return
	}
	v := data[0]
	u.mu.Lock()
	defer u.mu.Unlock()
	switch offset {
	case RegData:
		if u.lcr&LCRDLAB != 0 {
			u.dll = v
			break
		}
		if u.mcr&MCRLoop != 0 {
			u.receive(v)
		} else if _, err := u.out.Write([]byte{v}); err != nil {
			u.dropped++
		}
		// Sent at once: the holding register is empty again.
		u.thrIRQ = true
	case RegIER:
		if u.lcr&LCRDLAB != 0 {
			u.dlm = v
			break
		}
		old := u.ier
		u.ier = v & ierMask
		// Enabling ETBEI while THR is empty (it always is) raises
		// THRE afresh: Linux's 8250 probes exactly this to decide
		// whether the UART has the "THRE bug".
		if old&IERTHRE == 0 && u.ier&IERTHRE != 0 {
			u.thrIRQ = true
		}
	case RegFCR:
		on := v&FCREnable != 0
		if on != u.fifoOn {
			u.fifoOn = on
			u.clearRx()
		}
		if on {
			if v&FCRClearRx != 0 {
				u.clearRx()
			}
			u.trigger = triggerLevels[v>>6]
		}
	case RegLCR:
		u.lcr = v
	case RegMCR:
		wasLoop := u.mcr&MCRLoop != 0
		u.mcr = v & mcrMask
		u.setModemInputs(u.modemInputs())
		if wasLoop && u.mcr&MCRLoop == 0 {
			u.signalSpace() // host input is connected again
		}
	case RegLSR, RegMSR:
		// Read-only on a 16550A (writes are a factory test mode).
	case RegSCR:
		u.scr = v
	}
	u.update()
}

// Enqueue offers bytes received from the host and returns how many the
// receive FIFO took: at most its free space, and none while the UART is in
// loopback mode (its serial input is disconnected then). It never blocks.
func (u *UART) Enqueue(p []byte) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.mcr&MCRLoop != 0 {
		return 0
	}
	n := 0
	for n < len(p) && u.rxLen < u.capacity() {
		u.receive(p[n])
		n++
	}
	if n > 0 {
		u.update()
	}
	return n
}

// SpaceAvailable returns a channel that receives after the guest frees
// receive space (reads RBR, clears or re-sizes the FIFO, leaves loopback).
// One token stands for any number of such events, so a waiter must retry
// Enqueue and may find the space already taken; WriteInput does this.
func (u *UART) SpaceAvailable() <-chan struct{} { return u.space }

// WriteInput pushes all of p into the receive FIFO, waiting for the guest
// to make room as often as needed. It returns early with ctx's error. Only
// one goroutine should feed a UART at a time, or their bytes interleave.
func (u *UART) WriteInput(ctx context.Context, p []byte) (int, error) {
	done := 0
	for {
		done += u.Enqueue(p[done:])
		if done == len(p) {
			return done, nil
		}
		select {
		case <-u.space:
		case <-ctx.Done():
			return done, ctx.Err()
		}
	}
}

// InputWriter adapts WriteInput to io.Writer, so the host side can be
// io.Copy(uart.InputWriter(ctx), os.Stdin).
func (u *UART) InputWriter(ctx context.Context) io.Writer { return inputWriter{u, ctx} }

type inputWriter struct {
	u   *UART
	ctx context.Context
}

func (w inputWriter) Write(p []byte) (int, error) { return w.u.WriteInput(w.ctx, p) }

// Dropped returns how many transmitted bytes the output writer refused.
func (u *UART) Dropped() uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.dropped
}
