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
// the disk. A goroutine polls a duplicate of the socket for POLLRDHUP
// only (replies, which are POLLIN, do not wake it) and an eventfd that
// stop signals. stop waits for the goroutine and closes the duplicate,
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
	done := make(chan struct{})
	go func() {
		defer close(done)
		fds := []unix.PollFd{{Fd: int32(dup), Events: unix.POLLRDHUP}, {Fd: int32(wake), Events: unix.POLLIN}}
		for {
			_, err := unix.Poll(fds, -1)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || fds[1].Revents != 0 {
				return
			}
			if fds[0].Revents != 0 {
				close(hup)
				return
			}
		}
	}()
	return func() {
		var one [8]byte
		one[0] = 1
		unix.Write(wake, one[:])
		<-done
		unix.Close(wake)
		unix.Close(dup)
	}, nil
}

func closeFD(fd int) { unix.Close(fd) }
