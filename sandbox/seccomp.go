package sandbox

import (
	"golang.org/x/sys/unix"
)

// Why a forbidden system call traps rather than kills (Mode On): with
// SECCOMP_RET_TRAP the call is not executed either, and the kernel sends
// SIGSYS with the call rolled back (rax holds its number again). The Go
// runtime owns SIGSYS and treats one from seccomp as fatal: it prints
// "SIGSYS: bad system call", the stack of the goroutine that made the call
// (which names the Go function behind it) and the registers, then exits
// with status 2. That is the "which syscall, and from where" a user needs
// to report a kill, without vio having to handle the signal itself (it
// cannot: os/signal never sees a synchronous SIGSYS). What SECCOMP_RET_KILL
// would add is that not one more instruction of vio runs; code that could
// exploit that window could as well make allowed calls, so the report wins.
// Mode Kill is there for those who want Firecracker's behaviour.

// A sysRule lets one system call through, perhaps only with some
// arguments.
type sysRule struct {
	name string
	nr   uint32
	// check, if set, emits instructions that inspect the arguments and
	// jump to allow or deny.
	check func(a *asm, allow, deny label)
	// errno, if non-zero, answers the call with this error instead of
	// running it, whatever the mode: for calls whose callers have a
	// fallback (clone3: glibc falls back to clone, whose flags the filter
	// can see).
	errno unix.Errno
}

// argHas allows the call when argument i has every bit of mask set.
func argHas(i int, mask uint32) func(*asm, label, label) {
	return func(a *asm, allow, deny label) {
		a.load(argLow(i))
		a.and(mask)
		a.jeq(mask, allow, deny)
	}
}

// argClear allows the call when argument i has none of the bits of mask.
func argClear(i int, mask uint32) func(*asm, label, label) {
	return func(a *asm, allow, deny label) {
		a.load(argLow(i))
		a.jset(mask, deny, allow)
	}
}

// argIn allows the call when argument i is one of vals.
func argIn(i int, vals ...uint32) func(*asm, label, label) {
	return func(a *asm, allow, deny label) {
		a.load(argLow(i))
		for _, v := range vals {
			a.jeq(v, allow, "")
		}
		a.jump(deny)
	}
}

// ioctlTypes allows an ioctl whose request number (argument 1) has one of
// the given types (bits 8-15 of the number: 0xAE for KVM, 'T' for TUN and
// terminals...) unless it is one of the refused requests.
func ioctlTypes(types []uint8, refused []uint32) func(*asm, label, label) {
	return func(a *asm, allow, deny label) {
		a.load(argLow(1))
		for _, r := range refused {
			a.jeq(r, deny, "")
		}
		a.and(0xff00)
		for _, t := range types {
			a.jeq(uint32(t)<<8, allow, "")
		}
		a.jump(deny)
	}
}

// x32SyscallBit marks the x32 ABI's system calls, which share the x86-64
// arch value; none of them is vio's.
const x32SyscallBit = 0x40000000

// program assembles the filter: the arch check, then each rule as a block
// that matches the call's number and returns, then the default deny.
func program(rules []sysRule, arch uint32, deny uint32) ([]unix.SockFilter, error) {
	var a asm
	a.load(offArch)
	a.jeq(arch, "archok", "")
	a.ret(deny)
	a.mark("archok")
	a.load(offNr)
	a.jge(x32SyscallBit, "", "nrok")
	a.ret(deny)
	a.mark("nrok")
	loaded := true // A holds the syscall number
	for _, r := range rules {
		if !loaded {
			a.load(offNr)
			loaded = true
		}
		skip := a.fresh("skip")
		switch {
		case r.errno != 0:
			a.jeq(r.nr, "", skip)
			a.ret(unix.SECCOMP_RET_ERRNO | uint32(r.errno)&unix.SECCOMP_RET_DATA)
		case r.check == nil:
			a.jeq(r.nr, "", skip)
			a.ret(unix.SECCOMP_RET_ALLOW)
		default:
			allow, no := a.fresh("allow"), a.fresh("deny")
			a.jeq(r.nr, "", skip)
			r.check(&a, allow, no)
			a.mark(no)
			a.ret(deny)
			a.mark(allow)
			a.ret(unix.SECCOMP_RET_ALLOW)
			loaded = false
		}
		a.mark(skip)
	}
	// The last rule's skip label lands here.
	a.ret(deny)
	return a.assemble()
}

// denyAction is the seccomp action for a call outside the allow-list.
func denyAction(m Mode) uint32 {
	switch m {
	case Kill:
		return unix.SECCOMP_RET_KILL_PROCESS
	case Log:
		return unix.SECCOMP_RET_LOG
	}
	return unix.SECCOMP_RET_TRAP
}
