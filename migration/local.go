package migration

import (
	"errors"
	"io"
	"net"
	"slices"

	"golang.org/x/sys/unix"
)

// Same-host ("local") migration: both vios run on one host, guest RAM is a
// memfd, and the source passes that memfd to the destination with
// SCM_RIGHTS instead of copying pages. The destination maps the very same
// pages as its guest RAM, so no pre-copy is needed: the source pauses,
// sends the device and vCPU state, and the destination resumes.
//
// The descriptor comes from a peer, so the destination checks it before
// anything maps it: it must be a memfd sealed against shrinking and growing
// (a file that shrank under a shared mapping would turn the next guest
// access into SIGBUS in the VMM) with its seals sealed, not write-sealed,
// and exactly as long as the regions the layout places in it, each at a
// page-aligned offset, none overlapping another.

// ErrLocal is matched by errors about a local migration that cannot work
// (RAM not shared, not a UNIX socket, a receiver that cannot take one).
var ErrLocal = errors.New("local migration impossible")

type localError struct{ msg string }

func (e *localError) Error() string        { return e.msg }
func (e *localError) Is(target error) bool { return target == ErrLocal }

// LocalSource is a Source that can migrate on the same host: its guest RAM
// is one shared file.
type LocalSource interface {
	Source
	// SharedRAM returns the file holding guest RAM (it stays the
	// Source's) and the offset in it of each region RAM returns, or an
	// error saying why RAM cannot be passed.
	SharedRAM() (fd int, offsets []uint64, err error)
}

// SharedRAM is guest RAM a local migration's source passed: one checked
// memfd and each region's place in it, in the layout's order.
type SharedRAM struct {
	FD      int // Receive's: the target duplicates what it keeps
	Regions []SharedRegion
}

// SharedRegion is one region of guest RAM and where its bytes lie in the
// file.
type SharedRegion struct {
	GPA, Size, Offset uint64
}

// LocalTarget is a Target that can receive a local migration.
type LocalTarget interface {
	Target
	// BuildShared is Build whose guest RAM is ram, mapped shared, instead
	// of zeroed memory of its own. ram.FD is closed when it returns: the
	// VM keeps a duplicate if it needs the file. The regions are the
	// source's layout, already checked against the file; the VM's own
	// layout from config must be the same, or BuildShared fails.
	BuildShared(config []byte, ram SharedRAM) (Incoming, error)
}

// fdConn is a connection that carries descriptors: *net.UnixConn.
type fdConn interface {
	ReadMsgUnix(b, oob []byte) (n, oobn, flags int, addr *net.UnixAddr, err error)
	WriteMsgUnix(b, oob []byte, addr *net.UnixAddr) (n, oobn int, err error)
}

// localConn unwraps what a local migration needs from conn: a UNIX socket.
func localConn(conn any) (fdConn, error) {
	c, ok := conn.(fdConn)
	if !ok {
		return nil, &localError{"a local migration passes guest RAM's descriptor over a UNIX socket: use a unix: URL (and no TLS)"}
	}
	return c, nil
}

// sendMemory writes the memory record (offsets in the layout's order) with
// fd attached to its first byte. The encoder's buffer must be flushed
// before: the descriptor travels with the bytes of this sendmsg.
func sendMemory(c fdConn, fd int, offsets []uint64) error {
	b := make([]byte, frameSize, frameSize+8*len(offsets))
	le.PutUint16(b, recMemory)
	le.PutUint32(b[4:], uint32(8*len(offsets)))
	for _, o := range offsets {
		b = le.AppendUint64(b, o)
	}
	n, _, err := c.WriteMsgUnix(b, unix.UnixRights(fd), nil)
	for err == nil && n < len(b) {
		// A short write sent the descriptor with the first part.
		var m int
		m, _, err = c.WriteMsgUnix(b[n:], nil, nil)
		n += m
	}
	return err
}

// maxFDs is how many descriptors a memory record's control message may
// hold before the kernel truncates it: one is allowed; room for more
// lets a peer that sends several be told so (and their fds closed).
const maxFDs = 8

// readMemory reads the memory record and its descriptor straight from the
// socket: nothing may be buffered ahead of it, or the kernel would have
// dropped the descriptor with the bytes it came with. It returns the
// offsets and the descriptor, which the caller must close.
func readMemory(c fdConn, regions int) (offsets []uint64, fd int, err error) {
	var fds []int
	defer func() {
		for _, f := range fds {
			if err != nil || f != fd {
				unix.Close(f)
			}
		}
		if err != nil {
			fd = -1
		}
	}()
	// Exactly the frame, then exactly its payload: whatever follows is
	// the next read's, through the buffered reader.
	var h [frameSize]byte
	if err := readWithFDs(c, h[:], &fds); err != nil {
		return nil, -1, err
	}
	f := frame{typ: le.Uint16(h[:]), len: le.Uint32(h[4:])}
	switch {
	case f.typ != recMemory:
		return nil, -1, protoErr("%v record where a memory record belongs", f)
	case le.Uint16(h[2:]) != 0:
		return nil, -1, protoErr("memory record with reserved bits set")
	case f.len != uint32(8*regions):
		return nil, -1, protoErr("memory record of %d bytes for %d RAM regions", f.len, regions)
	}
	b := make([]byte, f.len)
	if err := readWithFDs(c, b, &fds); err != nil {
		return nil, -1, err
	}
	if len(fds) != 1 {
		return nil, -1, protoErr("memory record with %d descriptors attached, want guest RAM's one", len(fds))
	}
	for i := range regions {
		offsets = append(offsets, le.Uint64(b[8*i:]))
	}
	return offsets, fds[0], nil
}

// readWithFDs fills b from c and appends the descriptors that came with it
// to fds (which the caller closes).
func readWithFDs(c fdConn, b []byte, fds *[]int) error {
	oob := make([]byte, unix.CmsgSpace(4*maxFDs))
	for got := 0; got < len(b); {
		n, oobn, flags, _, err := c.ReadMsgUnix(b[got:], oob)
		if oobn > 0 {
			msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
			if perr != nil {
				return protoErr("memory record: control message: %v", perr)
			}
			for _, m := range msgs {
				if f, rerr := unix.ParseUnixRights(&m); rerr == nil {
					*fds = append(*fds, f...)
				}
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return protoErr("memory record: more than %d descriptors attached", maxFDs)
		}
		got += n
		if err != nil {
			return protoErr("memory record: %v", eofIsUnexpected(err))
		}
		if n == 0 {
			return protoErr("memory record: %v", io.ErrUnexpectedEOF)
		}
	}
	return nil
}

// Seals a memfd of guest RAM must have (vio's own memory package sets
// these), and ones it must not.
const (
	requiredSeals  = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
	forbiddenSeals = unix.F_SEAL_WRITE | unix.F_SEAL_FUTURE_WRITE
)

// checkSharedRAM checks the file a peer passed against the regions its
// layout and memory records describe.
func checkSharedRAM(fd int, layout []SharedRegion) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return protoErr("guest RAM's descriptor: fstat: %v", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return protoErr("guest RAM's descriptor is not a memfd (file type %#o)", st.Mode&unix.S_IFMT)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return protoErr("guest RAM's descriptor is not a memfd (it has no seals: %v)", err)
	}
	if seals&requiredSeals != requiredSeals {
		return protoErr("guest RAM's memfd has seals %#x, want at least %#x (no shrinking, no growing, no further seals)", seals, requiredSeals)
	}
	if seals&forbiddenSeals != 0 {
		return protoErr("guest RAM's memfd is sealed against writes (seals %#x)", seals)
	}
	page := uint64(unix.Getpagesize())
	rs := slices.Clone(layout)
	slices.SortFunc(rs, func(a, b SharedRegion) int {
		switch {
		case a.Offset < b.Offset:
			return -1
		case a.Offset > b.Offset:
			return 1
		}
		return 0
	})
	var end uint64
	for i, r := range rs {
		e := r.Offset + r.Size
		switch {
		case r.Offset%page != 0:
			return protoErr("RAM region at %#x lies at file offset %#x, not page aligned", r.GPA, r.Offset)
		case e < r.Offset || e > 1<<62:
			return protoErr("RAM region at %#x: file offset %#x+%#x overflows", r.GPA, r.Offset, r.Size)
		case i > 0 && r.Offset < end:
			return protoErr("RAM regions overlap in the memfd at offset %#x", r.Offset)
		}
		end = e
	}
	if st.Size < 0 || uint64(st.Size) != end {
		return protoErr("guest RAM's memfd is %d bytes, but the layout places %d bytes in it", st.Size, end)
	}
	return nil
}
