package main

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// terminalInput prepares stdin for a guest console. On a terminal it
// switches to raw mode, so keys (Ctrl-C included) go to the guest, and
// watches for the escape Ctrl-A x, which calls stop; Ctrl-A Ctrl-A sends one
// Ctrl-A. restore puts the terminal back.
func terminalInput(in *os.File, stop func()) (io.Reader, func(), error) {
	fd := int(in.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return in, func() {}, nil // not a terminal: pass it through
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, nil, err
	}
	restore := func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }
	return &escapeReader{r: in, stop: stop}, restore, nil
}

const ctrlA = 0x01

// escapeReader filters the Ctrl-A escape sequences out of terminal input.
type escapeReader struct {
	r       io.Reader
	stop    func()
	escaped bool
}

func (e *escapeReader) Read(p []byte) (int, error) {
	for {
		n, err := e.r.Read(p)
		out := p[:0]
		for _, c := range p[:n] {
			switch {
			case e.escaped:
				e.escaped = false
				switch c {
				case 'x', 'X':
					e.stop()
					return len(out), io.EOF
				case ctrlA:
					out = append(out, ctrlA)
				}
			case c == ctrlA:
				e.escaped = true
			default:
				out = append(out, c)
			}
		}
		if len(out) > 0 || err != nil {
			return len(out), err
		}
	}
}
