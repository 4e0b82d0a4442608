package vufront

import (
	"errors"
	"net"

	"golang.org/x/sys/unix"
)

// watchHangup closes hup when the peer of uc hangs up. The protocol has
// no message the back-end sends unasked (BACKEND_REQ is not negotiated),
// so nothing reads the socket between exchanges; a back-end killed while
// the guest is busy would otherwise go unnoticed until the guest resets
// the disk. A goroutine waits on an epoll set of a duplicate of the
// socket, for EPOLLRDHUP only (replies, which are EPOLLIN, do not wake
// it), and an eventfd that stop signals. stop waits for the goroutine and closes the duplicate,
// so call it before closing uc: the duplicate keeps the socket open.
func watchHangup(uc *net.UnixConn, hup chan struct{}) (stop func(), err error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	dup := -1
	var derr error
	if err := raw.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(dup)
		return nil, err
	}
	// epoll rather than poll(2): vio's seccomp filter allows the epoll
	// calls the Go runtime makes, and poll is not among them.
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		unix.Close(wake)
		unix.Close(dup)
		return nil, err
	}
	for _, e := range []struct {
		fd     int
		events uint32
	}{{dup, unix.EPOLLRDHUP}, {wake, unix.EPOLLIN}} {
		ev := unix.EpollEvent{Events: e.events, Fd: int32(e.fd)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, e.fd, &ev); err != nil {
			unix.Close(ep)
			unix.Close(wake)
			unix.Close(dup)
			return nil, err
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		evs := make([]unix.EpollEvent, 2)
		for {
			n, err := unix.EpollWait(ep, evs, -1)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return
			}
			for _, e := range evs[:n] {
				if int(e.Fd) == wake {
					return
				}
			}
			if n > 0 {
				close(hup) // EPOLLRDHUP, EPOLLHUP or EPOLLERR on the socket
				return
			}
		}
	}()
	return func() {
		var one [8]byte
		one[0] = 1
		unix.Write(wake, one[:])
		<-done
		unix.Close(ep)
		unix.Close(wake)
		unix.Close(dup)
	}, nil
}

func closeFD(fd int) { unix.Close(fd) }
