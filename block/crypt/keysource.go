package crypt

import (
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sync"

	"golang.org/x/sys/unix"
)

// KeySource says where a passphrase comes from: a file, an open file
// descriptor or an environment variable, exactly one of them. There is
// deliberately no way to give the passphrase itself: on a command line or
// in a configuration it would show in ps, in shell histories and in the
// VM's config as the API returns it.
type KeySource struct {
	File string // the whole file is the passphrase, byte for byte (as cryptsetup --key-file)
	FD   *int   // read from offset 0 if the descriptor can seek, else to EOF once
	Env  string // the variable's value
}

// MaxKeySize bounds a passphrase read from a file or descriptor
// (cryptsetup's default limit for key files).
const MaxKeySize = 8 << 20

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Check reports a KeySource that names no source, several, or a bad one.
func (k KeySource) Check() error {
	n := 0
	if k.File != "" {
		n++
	}
	if k.FD != nil {
		n++
		if *k.FD < 0 {
			return fmt.Errorf("key fd %d is negative", *k.FD)
		}
	}
	if k.Env != "" {
		n++
		if !envName.MatchString(k.Env) {
			return fmt.Errorf("key environment variable %q is not a valid name", k.Env)
		}
	}
	switch n {
	case 0:
		return errors.New("no key: give a key file, a key fd or a key environment variable (never the passphrase itself)")
	case 1:
		return nil
	}
	return errors.New("several keys: give exactly one of a key file, a key fd and a key environment variable")
}

// Read returns the passphrase. The caller wipes it (clear) once used.
func (k KeySource) Read() ([]byte, error) {
	if err := k.Check(); err != nil {
		return nil, err
	}
	var p []byte
	var err error
	switch {
	case k.File != "":
		p, err = readKeyFile(k.File)
	case k.FD != nil:
		p, err = readKeyFD(*k.FD)
	default:
		v, ok := os.LookupEnv(k.Env)
		if !ok {
			return nil, fmt.Errorf("the key environment variable %s is not set", k.Env)
		}
		p = []byte(v)
	}
	if err != nil {
		return nil, err
	}
	if len(p) == 0 {
		clear(p)
		return nil, errors.New("the key is empty")
	}
	return p, nil
}

func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	return readLimited(f, "key file "+path)
}

func readLimited(r io.Reader, what string) ([]byte, error) {
	p, err := io.ReadAll(io.LimitReader(r, MaxKeySize+1))
	if err != nil {
		clear(p)
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(p) > MaxKeySize {
		clear(p)
		return nil, fmt.Errorf("%s is larger than %d bytes", what, MaxKeySize)
	}
	return p, nil
}

// fdKeys keeps what was read from descriptors that cannot seek (a pipe):
// they can be read only once, and a VM reopens its disks on a reboot.
var fdKeys struct {
	sync.Mutex
	m map[int][]byte
}

func readKeyFD(fd int) ([]byte, error) {
	fdKeys.Lock()
	defer fdKeys.Unlock()
	if p, ok := fdKeys.m[fd]; ok {
		return append([]byte(nil), p...), nil
	}
	// A duplicate, so that closing our *os.File leaves the caller's
	// descriptor open.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("key fd %d: %w", fd, err)
	}
	f := os.NewFile(uintptr(dup), fmt.Sprintf("key fd %d", fd))
	defer f.Close()
	if _, err := f.Seek(0, io.SeekStart); err == nil {
		return readLimited(f, fmt.Sprintf("key fd %d", fd))
	}
	p, err := readLimited(f, fmt.Sprintf("key fd %d", fd))
	if err != nil {
		return nil, err
	}
	if fdKeys.m == nil {
		fdKeys.m = map[int][]byte{}
	}
	fdKeys.m[fd] = append([]byte(nil), p...)
	return p, nil
}
