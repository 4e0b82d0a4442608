package sandbox

import (
	"golang.org/x/sys/unix"
)

const auditArch = unix.AUDIT_ARCH_X86_64

// ioctl types vio issues requests of: KVM and its VMs and vCPUs, TUN/TAP
// and terminals ('T', which share the type), block devices (a disk on a
// device node), sockets (SIOC*), vhost and VFIO.
var ioctlTypeList = []uint8{0xAE, 'T', 0x12, 0x89, 0xAF, ';'}

// Terminal requests that are 'T' but that vio never makes, and that a
// compromised process could abuse through the terminal it was given:
// pushing input into the user's shell, redirecting the console, changing
// the line discipline.
var ioctlRefused = []uint32{unix.TIOCSTI, unix.TIOCLINUX, unix.TIOCCONS, unix.TIOCSETD}

// allowList is every system call vio makes once a VM is set up, in
// steady state and while building a VM afresh (a guest reboot, vm.boot,
// vm.restore, hot plug, snapshots), by the Go runtime and by vio. It was
// gathered by running the e2e scenarios under strace (see
// docs/security.md) and reading what the code calls. The calls that run
// on every I/O come first: the filter tests the rules in order.
//
// What is missing on purpose: execve and fork (clone without
// CLONE_THREAD), ptrace, process_vm_*, mount and namespaces, setuid and
// friends, module and kexec loading, bpf, perf_event_open, keyctl,
// userfaultfd, personality, socket families other than UNIX and IP.
func allowList(pid int) []sysRule {
	self := uint32(pid)
	return []sysRule{
		{name: "ioctl", nr: unix.SYS_IOCTL, check: ioctlTypes(ioctlTypeList, ioctlRefused)},
		{name: "futex", nr: unix.SYS_FUTEX},
		{name: "read", nr: unix.SYS_READ},
		{name: "write", nr: unix.SYS_WRITE},
		{name: "io_uring_enter", nr: unix.SYS_IO_URING_ENTER},
		{name: "epoll_pwait", nr: unix.SYS_EPOLL_PWAIT},
		{name: "pread64", nr: unix.SYS_PREAD64},
		{name: "pwrite64", nr: unix.SYS_PWRITE64},
		{name: "preadv", nr: unix.SYS_PREADV},
		{name: "pwritev", nr: unix.SYS_PWRITEV},
		{name: "preadv2", nr: unix.SYS_PREADV2},
		{name: "pwritev2", nr: unix.SYS_PWRITEV2},
		{name: "readv", nr: unix.SYS_READV},
		{name: "writev", nr: unix.SYS_WRITEV},
		{name: "nanosleep", nr: unix.SYS_NANOSLEEP},
		{name: "sched_yield", nr: unix.SYS_SCHED_YIELD},
		{name: "rt_sigreturn", nr: unix.SYS_RT_SIGRETURN},
		{name: "rt_sigprocmask", nr: unix.SYS_RT_SIGPROCMASK},
		{name: "tgkill", nr: unix.SYS_TGKILL, check: argIn(0, self)},
		{name: "getpid", nr: unix.SYS_GETPID},
		{name: "gettid", nr: unix.SYS_GETTID},
		{name: "recvmsg", nr: unix.SYS_RECVMSG},
		{name: "sendmsg", nr: unix.SYS_SENDMSG},
		{name: "recvfrom", nr: unix.SYS_RECVFROM},
		{name: "sendto", nr: unix.SYS_SENDTO},
		{name: "fdatasync", nr: unix.SYS_FDATASYNC},
		{name: "fsync", nr: unix.SYS_FSYNC},
		{name: "fallocate", nr: unix.SYS_FALLOCATE},
		{name: "ftruncate", nr: unix.SYS_FTRUNCATE},
		{name: "lseek", nr: unix.SYS_LSEEK},
		{name: "madvise", nr: unix.SYS_MADVISE},
		{name: "mmap", nr: unix.SYS_MMAP, check: argClear(2, unix.PROT_EXEC)},
		{name: "munmap", nr: unix.SYS_MUNMAP},
		{name: "mprotect", nr: unix.SYS_MPROTECT, check: argClear(2, unix.PROT_EXEC)},
		{name: "mremap", nr: unix.SYS_MREMAP},
		{name: "clock_gettime", nr: unix.SYS_CLOCK_GETTIME},
		{name: "clock_nanosleep", nr: unix.SYS_CLOCK_NANOSLEEP},
		{name: "restart_syscall", nr: unix.SYS_RESTART_SYSCALL},
		{name: "epoll_ctl", nr: unix.SYS_EPOLL_CTL},
		{name: "epoll_wait", nr: unix.SYS_EPOLL_WAIT},
		{name: "epoll_create1", nr: unix.SYS_EPOLL_CREATE1},
		{name: "eventfd2", nr: unix.SYS_EVENTFD2},
		{name: "pipe2", nr: unix.SYS_PIPE2},
		{name: "close", nr: unix.SYS_CLOSE},
		{name: "fcntl", nr: unix.SYS_FCNTL},
		{name: "flock", nr: unix.SYS_FLOCK},
		{name: "dup", nr: unix.SYS_DUP},
		{name: "dup3", nr: unix.SYS_DUP3},
		{name: "openat", nr: unix.SYS_OPENAT},
		{name: "fstat", nr: unix.SYS_FSTAT},
		{name: "newfstatat", nr: unix.SYS_NEWFSTATAT},
		{name: "statx", nr: unix.SYS_STATX},
		{name: "fstatfs", nr: unix.SYS_FSTATFS},
		{name: "statfs", nr: unix.SYS_STATFS},
		{name: "getdents64", nr: unix.SYS_GETDENTS64},
		{name: "readlinkat", nr: unix.SYS_READLINKAT},
		{name: "unlinkat", nr: unix.SYS_UNLINKAT},
		{name: "mkdirat", nr: unix.SYS_MKDIRAT},
		{name: "renameat", nr: unix.SYS_RENAMEAT},
		// A migration receiver links its listening socket into place
		// (migration.Listen); Landlock still decides where.
		{name: "linkat", nr: unix.SYS_LINKAT},
		{name: "fchmod", nr: unix.SYS_FCHMOD},
		{name: "fchmodat", nr: unix.SYS_FCHMODAT},
		{name: "memfd_create", nr: unix.SYS_MEMFD_CREATE},
		{name: "io_uring_setup", nr: unix.SYS_IO_URING_SETUP},
		{name: "io_uring_register", nr: unix.SYS_IO_URING_REGISTER},
		{name: "socket", nr: unix.SYS_SOCKET, check: argIn(0, unix.AF_UNIX, unix.AF_INET, unix.AF_INET6)},
		{name: "socketpair", nr: unix.SYS_SOCKETPAIR, check: argIn(0, unix.AF_UNIX)},
		{name: "bind", nr: unix.SYS_BIND},
		{name: "listen", nr: unix.SYS_LISTEN},
		{name: "accept4", nr: unix.SYS_ACCEPT4},
		{name: "connect", nr: unix.SYS_CONNECT},
		{name: "shutdown", nr: unix.SYS_SHUTDOWN},
		{name: "getsockname", nr: unix.SYS_GETSOCKNAME},
		{name: "getpeername", nr: unix.SYS_GETPEERNAME},
		{name: "setsockopt", nr: unix.SYS_SETSOCKOPT},
		{name: "getsockopt", nr: unix.SYS_GETSOCKOPT},
		{name: "getrandom", nr: unix.SYS_GETRANDOM},
		{name: "uname", nr: unix.SYS_UNAME},
		{name: "getuid", nr: unix.SYS_GETUID},
		{name: "geteuid", nr: unix.SYS_GETEUID},
		{name: "getgid", nr: unix.SYS_GETGID},
		{name: "getegid", nr: unix.SYS_GETEGID},
		{name: "sched_getaffinity", nr: unix.SYS_SCHED_GETAFFINITY},
		{name: "getrlimit", nr: unix.SYS_GETRLIMIT},
		{name: "prlimit64", nr: unix.SYS_PRLIMIT64, check: argIn(0, 0, self)},
		// The Go runtime: new threads (clone with CLONE_THREAD only: never a
		// new process), signal handling, and its own crash path.
		{name: "clone", nr: unix.SYS_CLONE, check: argHas(0, unix.CLONE_THREAD|unix.CLONE_VM)},
		{name: "clone3", nr: unix.SYS_CLONE3, errno: unix.ENOSYS},
		{name: "rt_sigaction", nr: unix.SYS_RT_SIGACTION},
		{name: "sigaltstack", nr: unix.SYS_SIGALTSTACK},
		{name: "kill", nr: unix.SYS_KILL, check: argIn(0, self)},
		// The runtime names the memory it maps (PR_SET_VMA_ANON_NAME,
		// GODEBUG=decoratemappings), whenever the heap grows.
		{name: "prctl", nr: unix.SYS_PRCTL, check: argIn(0, unix.PR_SET_VMA)},
		{name: "set_robust_list", nr: unix.SYS_SET_ROBUST_LIST},
		{name: "rseq", nr: unix.SYS_RSEQ},
		{name: "exit", nr: unix.SYS_EXIT},
		{name: "exit_group", nr: unix.SYS_EXIT_GROUP},
	}
}
