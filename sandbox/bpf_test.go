package sandbox

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// seccompData is struct seccomp_data, which the filter reads.
type seccompData struct {
	nr   int32
	arch uint32
	args [6]uint64
}

func (d seccompData) bytes() []byte {
	b := make([]byte, 64)
	binary.LittleEndian.PutUint32(b[0:], uint32(d.nr))
	binary.LittleEndian.PutUint32(b[4:], d.arch)
	for i, a := range d.args {
		binary.LittleEndian.PutUint64(b[16+8*i:], a)
	}
	return b
}

// runBPF interprets the subset of classic BPF that the assembler emits, as
// the kernel's seccomp would, failing the test on anything else.
func runBPF(t *testing.T, prog []unix.SockFilter, d seccompData) uint32 {
	t.Helper()
	data := d.bytes()
	var acc uint32
	for pc := 0; pc < len(prog); pc++ {
		in := prog[pc]
		switch in.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			if in.K%4 != 0 || int(in.K)+4 > len(data) {
				t.Fatalf("pc %d: load at %d", pc, in.K)
			}
			acc = binary.LittleEndian.Uint32(data[in.K:])
		case unix.BPF_ALU | unix.BPF_AND | unix.BPF_K:
			acc &= in.K
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K:
			var c bool
			switch in.Code &^ (unix.BPF_JMP | unix.BPF_K) {
			case unix.BPF_JEQ:
				c = acc == in.K
			case unix.BPF_JSET:
				c = acc&in.K != 0
			case unix.BPF_JGE:
				c = acc >= in.K
			}
			if c {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		case unix.BPF_RET | unix.BPF_K:
			return in.K
		default:
			t.Fatalf("pc %d: unexpected BPF code %#x", pc, in.Code)
		}
	}
	t.Fatal("the program ran off its end")
	return 0
}

func TestFilterProgram(t *testing.T) {
	const pid = 4242
	const deny = unix.SECCOMP_RET_TRAP
	const allow = unix.SECCOMP_RET_ALLOW
	prog, err := program(allowList(pid), auditArch, deny)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d rules, %d instructions", len(allowList(pid)), len(prog))
	call := func(nr int, args ...uint64) seccompData {
		d := seccompData{nr: int32(nr), arch: auditArch}
		copy(d.args[:], args)
		return d
	}
	cases := []struct {
		name string
		d    seccompData
		want uint32
	}{
		{"futex", call(unix.SYS_FUTEX), allow},
		{"exit_group", call(unix.SYS_EXIT_GROUP), allow},
		{"execve", call(unix.SYS_EXECVE), deny},
		{"ptrace", call(unix.SYS_PTRACE), deny},
		{"mount", call(unix.SYS_MOUNT), deny},
		{"a number beyond every table", call(999), deny},
		{"futex in the x32 ABI", call(unix.SYS_FUTEX | x32SyscallBit), deny},
		{"futex from i386 code", seccompData{nr: unix.SYS_FUTEX, arch: unix.AUDIT_ARCH_I386}, deny},
		{"clone of a thread", call(unix.SYS_CLONE, unix.CLONE_VM|unix.CLONE_FS|unix.CLONE_FILES|unix.CLONE_SIGHAND|unix.CLONE_SYSVSEM|unix.CLONE_THREAD), allow},
		{"clone of a process (fork)", call(unix.SYS_CLONE, uint64(unix.SIGCHLD)), deny},
		{"clone of a process sharing memory (vfork)", call(unix.SYS_CLONE, unix.CLONE_VM|unix.CLONE_VFORK|uint64(unix.SIGCHLD)), deny},
		{"clone3", call(unix.SYS_CLONE3), unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
		{"mmap of data", call(unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_WRITE), allow},
		{"mmap of code", call(unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_EXEC), deny},
		{"mprotect to code", call(unix.SYS_MPROTECT, 0, 4096, unix.PROT_EXEC), deny},
		{"mprotect to none", call(unix.SYS_MPROTECT, 0, 4096, unix.PROT_NONE), allow},
		{"tgkill of our thread", call(unix.SYS_TGKILL, pid, 7, uint64(unix.SIGURG)), allow},
		{"tgkill of another process", call(unix.SYS_TGKILL, 1, 1, uint64(unix.SIGKILL)), deny},
		{"kill of another process", call(unix.SYS_KILL, 1, uint64(unix.SIGKILL)), deny},
		{"kill of ourselves", call(unix.SYS_KILL, pid, uint64(unix.SIGABRT)), allow},
		{"KVM_RUN", call(unix.SYS_IOCTL, 7, 0xae80), allow},
		{"KVM_IRQFD", call(unix.SYS_IOCTL, 7, 0x4020ae76), allow},
		{"TUNSETIFF", call(unix.SYS_IOCTL, 7, unix.TUNSETIFF), allow},
		{"TCSETS", call(unix.SYS_IOCTL, 0, unix.TCSETS), allow},
		{"BLKGETSIZE64", call(unix.SYS_IOCTL, 7, unix.BLKGETSIZE64), allow},
		{"TIOCSTI (typing into the user's terminal)", call(unix.SYS_IOCTL, 0, unix.TIOCSTI), deny},
		{"TIOCSTI with junk in the high half", call(unix.SYS_IOCTL, 0, 0xdead0000_00000000|unix.TIOCSTI), deny},
		{"FS_IOC_SETFLAGS", call(unix.SYS_IOCTL, 7, unix.FS_IOC_SETFLAGS), deny},
		{"socket AF_UNIX", call(unix.SYS_SOCKET, unix.AF_UNIX, unix.SOCK_STREAM), allow},
		{"socket AF_INET6", call(unix.SYS_SOCKET, unix.AF_INET6, unix.SOCK_STREAM), allow},
		{"socket AF_NETLINK", call(unix.SYS_SOCKET, unix.AF_NETLINK, unix.SOCK_RAW), deny},
		{"socket AF_PACKET", call(unix.SYS_SOCKET, unix.AF_PACKET, unix.SOCK_RAW), deny},
		{"prlimit64 of ourselves", call(unix.SYS_PRLIMIT64, 0, unix.RLIMIT_NOFILE), allow},
		{"prlimit64 of another process", call(unix.SYS_PRLIMIT64, 1, unix.RLIMIT_NOFILE), deny},
		{"landlock_restrict_self (after the ruleset is in force)", call(unix.SYS_LANDLOCK_RESTRICT_SELF), deny},
		{"seccomp (no second filter)", call(unix.SYS_SECCOMP), deny},
		{"prctl naming memory", call(unix.SYS_PRCTL, unix.PR_SET_VMA, unix.PR_SET_VMA_ANON_NAME), allow},
		{"prctl dropping the death signal", call(unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, 0), deny},
		{"prctl making the process dumpable", call(unix.SYS_PRCTL, unix.PR_SET_DUMPABLE, 1), deny},
	}
	for _, c := range cases {
		if got := runBPF(t, prog, c.d); got != c.want {
			t.Errorf("%s: action %#x, want %#x", c.name, got, c.want)
		}
	}
	// Every rule without an argument check lets its call through.
	for _, r := range allowList(pid) {
		if r.check == nil && r.errno == 0 {
			if got := runBPF(t, prog, call(int(r.nr))); got != allow {
				t.Errorf("%s (%d): action %#x, want allow", r.name, r.nr, got)
			}
		}
	}
}

func TestAllowListHasNoDuplicates(t *testing.T) {
	seen := map[uint32]string{}
	for _, r := range allowList(1) {
		if prev, ok := seen[r.nr]; ok {
			t.Errorf("%s and %s are both system call %d", prev, r.name, r.nr)
		}
		seen[r.nr] = r.name
	}
}

func TestDenyActions(t *testing.T) {
	for m, want := range map[Mode]uint32{On: unix.SECCOMP_RET_TRAP, Kill: unix.SECCOMP_RET_KILL_PROCESS, Log: unix.SECCOMP_RET_LOG} {
		prog, err := program(allowList(1), auditArch, denyAction(m))
		if err != nil {
			t.Fatal(err)
		}
		d := seccompData{nr: unix.SYS_EXECVE, arch: auditArch}
		if got := runBPF(t, prog, d); got != want {
			t.Errorf("mode %v: execve gets %#x, want %#x", m, got, want)
		}
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"on": On, "": On, "true": On, "off": Off, "false": Off, "kill": Kill, "log": Log, "LOG": Log} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseMode("strict"); err == nil {
		t.Error("ParseMode(strict) succeeded")
	} else {
		t.Log(err)
	}
}
