// Package vcpu runs virtual CPUs: one goroutine per vCPU, locked to its OS
// thread for its whole life, entering the guest with KVM_RUN in a loop and
// dispatching the exits that need userspace: port I/O and MMIO to a
// bus.Bus each, everything else to the VM owner as a typed Event.
//
// A running vCPU can be forced out of the guest at any time, from any
// goroutine, without races: Pause returns once the vCPU has left KVM_RUN
// and parked, Resume lets it continue, Stop ends it. See kick for how.
//
// Accesses no device claims behave as on a PC with nothing at the address:
// reads return all ones, writes are dropped. Both are counted (Counters),
// since a guest poking at empty space is worth knowing about.
package vcpu

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/kvm"
)

// Config is what a Runner dispatches to.
type Config struct {
	PIO     *bus.Bus // port I/O space; nil means no port is claimed
	MMIO    *bus.Bus // MMIO space; nil means no address is claimed
	Handler Handler  // events; nil stops the vCPU on any event
}

// State is a Runner's lifecycle state.
type State int32

const (
	Created State = iota // not started
	Running              // in its loop: in the guest or handling an exit
	Paused               // parked, outside KVM_RUN
	Stopped              // loop ended; final
)

func (s State) String() string {
	switch s {
	case Created:
		return "created"
	case Running:
		return "running"
	case Paused:
		return "paused"
	case Stopped:
		return "stopped"
	}
	return fmt.Sprintf("state(%d)", int32(s))
}

// ErrStarted reports a Start after Start or Stop.
var ErrStarted = errors.New("vcpu: already started or stopped")

// Runner runs one vCPU.
type Runner struct {
	cpu     *kvm.VCPU
	pio     *bus.Bus
	mmio    *bus.Bus
	handler Handler

	// want is the requested state (Running, Paused or Stopped), written
	// under mu and read lock-free by the loop between runs.
	want atomic.Int32

	mu    sync.Mutex
	cond  sync.Cond // signalled on every change of state or want
	state State     // the loop's actual state
	tid   int       // the loop's OS thread while it lives, else 0

	counters counters
	done     chan struct{}

	// exitPending is set, on the loop's goroutine only, from the return
	// of a KVM_RUN with an exit until a KVM_RUN completes it.
	exitPending bool

	// device is the device access the loop is dispatching (see
	// accessKind), 0 when it is not in a device's handler: what a vCPU
	// that will not stop is stuck in.
	device atomic.Uint64
}

// The encoding of Runner.device: the kind in the top bits, the address
// below (port numbers and guest-physical addresses fit in 60 bits).
const (
	accessPIO   = 1 << 63
	accessMMIO  = 1 << 62
	accessWrite = 1 << 61
	accessAddr  = 1<<60 - 1
)

// Doing describes what the vCPU's thread is doing, for a vCPU that does
// not stop: handling a device access (which one), or in KVM_RUN.
func (r *Runner) Doing() string {
	a := r.device.Load()
	if a == 0 {
		r.mu.Lock()
		st := r.state
		r.mu.Unlock()
		if st == Running {
			return "in KVM_RUN or between exits (not in a device's handler)"
		}
		return st.String()
	}
	dir := "read from"
	if a&accessWrite != 0 {
		dir = "write to"
	}
	if a&accessPIO != 0 {
		return fmt.Sprintf("in a device's handler for a port I/O %s port %#x", dir, a&accessAddr)
	}
	return fmt.Sprintf("in a device's handler for an MMIO %s %#x", dir, a&accessAddr)
}

// New prepares a Runner for cpu. The Runner does not own cpu: close it after
// the Runner has stopped.
func New(cpu *kvm.VCPU, cfg Config) *Runner {
	r := &Runner{cpu: cpu, pio: cfg.PIO, mmio: cfg.MMIO, handler: cfg.Handler, done: make(chan struct{})}
	r.cond.L = &r.mu
	r.want.Store(int32(Running))
	return r
}

// ID returns the vCPU's id.
func (r *Runner) ID() int { return r.cpu.ID() }

// VCPU returns the vCPU. Its register calls may be made from any goroutine
// while the Runner is Created, Paused or Stopped.
func (r *Runner) VCPU() *kvm.VCPU { return r.cpu }

// State returns the Runner's current state.
func (r *Runner) State() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

// Done is closed when the loop has ended.
func (r *Runner) Done() <-chan struct{} { return r.done }

// Start starts the loop on a new goroutine and returns once it runs on its
// locked thread (so a Pause or Stop right after Start is well defined). If
// Pause was called before Start, the vCPU starts parked.
func (r *Runner) Start() error {
	r.mu.Lock()
	if r.state != Created {
		r.mu.Unlock()
		return ErrStarted
	}
	r.state = Running // claims the Runner; loop confirms it on its thread
	r.mu.Unlock()
	started := make(chan struct{})
	go r.loop(started)
	<-started
	return nil
}

// Pause forces the vCPU out of the guest and returns once it is parked
// (or has stopped). The guest's state is then stable: registers can be read
// and devices see no access from this vCPU until Resume.
func (r *Runner) Pause() {
	r.request(Paused)
	r.waitOut()
}

// Resume lets a paused vCPU run again. It does not wait.
func (r *Runner) Resume() {
	r.mu.Lock()
	if State(r.want.Load()) == Paused {
		r.want.Store(int32(Running))
		r.cond.Broadcast()
	}
	r.mu.Unlock()
}

// Stop ends the loop and waits until it has: the vCPU is out of KVM_RUN for
// good and its thread has exited. Stop is idempotent.
func (r *Runner) Stop() {
	r.requestStop()
	<-r.done
}

// requestStop asks the loop to end (ending a Runner never started at
// once) without waiting for it.
func (r *Runner) requestStop() {
	r.request(Stopped)
	r.mu.Lock()
	if r.state == Created {
		r.state = Stopped
		close(r.done)
	}
	r.mu.Unlock()
}

// request records a wish to leave the guest and kicks the vCPU.
func (r *Runner) request(s State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if State(r.want.Load()) == Stopped {
		return // Stopped is final; a Pause must not undo it
	}
	r.want.Store(int32(s))
	r.cond.Broadcast()
	r.kickLocked()
}

// waitOut waits until the loop is parked or gone (or was never started).
func (r *Runner) waitOut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.state == Running {
		r.cond.Wait()
	}
}

// kickLocked forces the vCPU out of KVM_RUN, wherever its thread is:
//
//   - kvm_run.immediate_exit is set first. KVM checks it on every entry, so
//     if the thread is about to call KVM_RUN (or is handling an exit and will
//     call it again), that call returns EINTR without entering the guest.
//   - Then the thread is sent a signal with tgkill. If it is in the guest,
//     the pending signal makes KVM exit with EINTR. If it is in userspace,
//     the signal is simply handled there, harmlessly.
//
// The loop clears immediate_exit before it reads want, never after (see
// loop), so a kick can neither be lost (want set, vCPU in the guest,
// nothing pending) nor leave the vCPU stuck (immediate_exit set with no one
// to clear it): at worst a stale immediate_exit costs one spurious EINTR.
//
// The signal is SIGURG. The Go runtime already sends SIGURG to its own
// threads for asynchronous preemption, so every Go program must tolerate
// spurious SIGURGs, and the runtime's handler for it is installed in every
// Go binary (even c-archive builds) and does nothing when no preemption was
// requested. Using it needs no signal.Notify, no handler of ours and no
// signal mask games; the alternatives are worse in Go: a real-time signal
// needs signal.Notify and a goroutine draining it (global state a library
// should not own), and the QEMU scheme (block the signal in the thread,
// unblock it only in the guest with KVM_SET_SIGNAL_MASK, drain it with
// sigtimedwait) fights the runtime, which manages thread signal masks
// itself. SIGURG can also arrive from the runtime while the vCPU is in the
// guest; that is one more EINTR, which the loop absorbs.
//
// The tid is only used under mu, and the loop clears it under mu before its
// thread exits (the goroutine never unlocks its thread, so the thread dies
// with it): a kick never reaches a recycled thread id.
func (r *Runner) kickLocked() {
	if r.tid == 0 {
		return // not started or already gone; want is seen at the next check
	}
	r.cpu.SetImmediateExit(true)
	r.counters.kicks.Add(1)
	// ESRCH is impossible while tid is set; any other error leaves
	// immediate_exit to do the job once the guest exits on its own.
	_ = unix.Tgkill(unix.Getpid(), r.tid, unix.SIGURG)
}

// loop is the vCPU's goroutine.
func (r *Runner) loop(started chan<- struct{}) {
	// Locked for life and never unlocked: KVM works best when a vCPU stays
	// on one task, the kick targets this thread by id, and a thread that
	// ran a vCPU is discarded rather than returned to the Go scheduler.
	runtime.LockOSThread()
	held := holdP()
	if held {
		reserveP()
		r.cpu.SetHoldP(true)
	}

	r.mu.Lock()
	r.tid = unix.Gettid()
	r.cond.Broadcast()
	r.mu.Unlock()
	close(started)

	defer func() {
		if held {
			releaseP() // before done: Stop's caller sees GOMAXPROCS back
		}
		r.mu.Lock()
		r.tid = 0
		r.state = Stopped
		r.cond.Broadcast()
		r.mu.Unlock()
		close(r.done)
	}()

	for {
		// Clear immediate_exit *before* reading want; the order matters,
		// see kickLocked.
		r.cpu.SetImmediateExit(false)
		if want := State(r.want.Load()); want != Running {
			if want == Paused && r.exitPending {
				// The exit just handled is complete only once KVM_RUN
				// is entered again (an IN's value reaches RAX, RIP
				// moves past an OUT): do that without running the
				// guest, so that a paused vCPU's registers can be saved
				// and restored elsewhere without redoing the access.
				if !r.completeExit() {
					return
				}
				continue
			}
			if !r.park() {
				return
			}
			continue
		}
		r.exitPending = false
		if err := r.cpu.Run(); err != nil {
			if errors.Is(err, unix.EINTR) {
				r.counters.exit(kvm.ExitIntr)
				continue
			}
			if errors.Is(err, unix.EAGAIN) {
				continue // e.g. an AP waiting for SIPI; run again
			}
			if !r.report(Event{Kind: Error, Err: fmt.Errorf("vcpu %d: KVM_RUN: %w", r.cpu.ID(), err)}) {
				return
			}
			continue
		}
		r.exitPending = true
		if !r.handleExit() {
			return
		}
	}
}

// completeExit re-enters KVM_RUN with immediate_exit set, which finishes
// the exit handled last and returns EINTR before the guest runs. A
// completion that needs userspace again (the next round of a string I/O)
// comes back as an exit, which is handled like any other. It reports
// false when the loop must end.
func (r *Runner) completeExit() bool {
	r.cpu.SetImmediateExit(true)
	err := r.cpu.Run()
	if err == nil {
		return r.handleExit() // exitPending stays set: complete this one too
	}
	r.exitPending = false
	if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
		return true
	}
	return r.report(Event{Kind: Error, Err: fmt.Errorf("vcpu %d: KVM_RUN (completing an exit): %w", r.cpu.ID(), err)})
}

// park waits while the vCPU is asked to stay out of the guest. It reports
// false when the loop must end.
func (r *Runner) park() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.state = Paused
	r.cond.Broadcast()
	for State(r.want.Load()) == Paused {
		r.cond.Wait()
	}
	if State(r.want.Load()) == Stopped {
		return false
	}
	r.state = Running
	r.cond.Broadcast()
	return true
}

// report hands ev to the handler and applies its answer. It reports false
// when the loop must end.
func (r *Runner) report(ev Event) bool {
	ev.VCPU = r.cpu.ID()
	r.counters.events.Add(1)
	act := Stop
	if r.handler != nil {
		act = r.handler(ev)
	}
	switch act {
	case Continue:
		return true
	case Park:
		r.mu.Lock()
		if State(r.want.Load()) == Running {
			r.want.Store(int32(Paused))
		}
		r.mu.Unlock()
		return true // the loop parks at its next check
	default:
		r.mu.Lock()
		r.want.Store(int32(Stopped))
		r.mu.Unlock()
		return false
	}
}

// handleExit dispatches the exit KVM_RUN just returned with. It reports
// false when the loop must end.
func (r *Runner) handleExit() bool {
	exit := r.cpu.Exit()
	reason := exit.Reason()
	r.counters.exit(reason)
	switch reason {
	case kvm.ExitIO:
		io, err := exit.IO()
		if err != nil {
			return r.report(Event{Kind: Error, Reason: reason, Err: err})
		}
		r.dispatchIO(io)
		return true
	case kvm.ExitMMIO:
		m, err := exit.MMIO()
		if err != nil {
			return r.report(Event{Kind: Error, Reason: reason, Err: err})
		}
		r.dispatchMMIO(m)
		return true
	case kvm.ExitIntr:
		return true
	case kvm.ExitHLT:
		return r.report(Event{Kind: Halt, Reason: reason})
	case kvm.ExitShutdown:
		ev := Event{Kind: Shutdown, Reason: reason}
		if regs, err := r.cpu.GetRegs(); err == nil {
			if sregs, err := r.cpu.GetSregs(); err == nil {
				ev.State = faultState(regs, sregs)
			}
		}
		return r.report(ev)
	case kvm.ExitSystemEvent:
		se, err := exit.SystemEvent()
		if err != nil {
			return r.report(Event{Kind: Error, Reason: reason, Err: err})
		}
		return r.report(Event{Kind: System, Reason: reason, System: se})
	case kvm.ExitFailEntry:
		return r.report(Event{Kind: FailEntry, Reason: reason, FailEntry: exit.FailEntry()})
	case kvm.ExitInternalError:
		return r.report(Event{Kind: InternalError, Reason: reason, Internal: exit.Internal()})
	default:
		return r.report(Event{Kind: Unhandled, Reason: reason})
	}
}

// dispatchIO performs a port I/O exit. String I/O (INS/OUTS, with or
// without REP) arrives as Count accesses of Size bytes to the same port;
// each is dispatched separately, in order, as the hardware would.
func (r *Runner) dispatchIO(io kvm.IO) {
	a := accessPIO | uint64(io.Port)
	if io.Out {
		a |= accessWrite
	}
	r.device.Store(a)
	defer r.device.Store(0)
	for i := 0; i < io.Count; i++ {
		d := io.Data[i*io.Size : (i+1)*io.Size]
		if io.Out {
			if !write(r.pio, uint64(io.Port), d) {
				r.counters.unclaimedPIOWrites.Add(1)
			}
		} else if !read(r.pio, uint64(io.Port), d) {
			r.counters.unclaimedPIOReads.Add(1)
		}
	}
}

func (r *Runner) dispatchMMIO(m kvm.MMIO) {
	a := accessMMIO | m.Addr&accessAddr
	if m.Write {
		a |= accessWrite
	}
	r.device.Store(a)
	defer r.device.Store(0)
	if m.Write {
		if !write(r.mmio, m.Addr, m.Data) {
			r.counters.unclaimedMMIOWrites.Add(1)
		}
	} else if !read(r.mmio, m.Addr, m.Data) {
		r.counters.unclaimedMMIOReads.Add(1)
	}
}

// read dispatches a read; unclaimed, it returns all ones (a floating bus).
func read(b *bus.Bus, addr uint64, d []byte) bool {
	if b != nil && b.Read(addr, d) {
		return true
	}
	for i := range d {
		d[i] = 0xff
	}
	return false
}

func write(b *bus.Bus, addr uint64, d []byte) bool {
	return b != nil && b.Write(addr, d)
}
