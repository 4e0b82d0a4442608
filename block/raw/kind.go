package raw

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// ErrNotImage is matched when a path names something that cannot hold an
// image: a FIFO, a socket, a character device, a directory.
var ErrNotImage = errors.New("not a regular file or block device")

// OpenImageFile opens path with flag (os.O_RDONLY, os.O_RDWR, plus
// O_DIRECT and the like) as an image file: a regular file or a block
// device. It never blocks on what it opens: a FIFO, whose open waits for
// a writer, is opened non-blocking, recognised and refused (as is a
// socket, character device or directory) instead of hanging start-up.
func OpenImageFile(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if err := imageKind(path, fi); err != nil {
		f.Close()
		return nil, err
	}
	// Reads and writes of an image block; clear what the open needed.
	if err := unix.SetNonblock(int(f.Fd()), false); err != nil {
		f.Close()
		return nil, fmt.Errorf("raw: %s: %w", path, err)
	}
	return f, nil
}

func imageKind(path string, fi fs.FileInfo) error {
	m := fi.Mode()
	var what string
	switch {
	case m.IsRegular(), m&fs.ModeDevice != 0 && m&fs.ModeCharDevice == 0:
		return nil
	case m&fs.ModeNamedPipe != 0:
		what = "a FIFO (named pipe)"
	case m&fs.ModeSocket != 0:
		what = "a socket"
	case m&fs.ModeCharDevice != 0:
		what = "a character device"
	case m.IsDir():
		what = "a directory"
	default:
		what = "not a file"
	}
	return fmt.Errorf("%s is %s: %w; give an image file or a block device", path, what, ErrNotImage)
}
