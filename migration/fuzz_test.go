package migration_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/migration"
	"github.com/viovmm/vio/migration/migrationtest"
)

// FuzzReceive feeds arbitrary streams to the receiver: it must end in a
// VM restored or an error with the VM discarded, never a panic, a hang
// or an allocation beyond the limits.
func FuzzReceive(f *testing.F) {
	f.Add(good().data(0, 2, 1, 2).data(1, 3, 9).iteration(1, 3).zero(0, 3, 5).iteration(2, 6).state().done().Bytes())
	f.Add(good().zero(0, 0, 8).zero(1, 0, 4).iteration(1, 12).state().done().Bytes())
	f.Add(good().Bytes())
	f.Add(new(stream).header().Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, tgt, _, err := receive(b)
		if err == nil {
			if !tgt.Built[0].Restored || rec == nil {
				t.Fatal("accepted but not restored")
			}
			return
		}
		for _, in := range tgt.Built {
			if !in.Discarded || in.Restored {
				t.Fatal("a failed migration kept its VM")
			}
		}
	})
}

// FuzzReceiveDisks is FuzzReceive for a source that copies disks: the
// disks record and the progress records before RAM. A VM is either
// restored or discarded.
func FuzzReceiveDisks(f *testing.F) {
	head := func() *stream {
		s := new(stream)
		s.WriteString(migration.Magic)
		s.u32(migration.Version).u32(2).config(`{}`)
		payload := append(make([]byte, 16), 1, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 2, 'd', '0')
		s.record(9, uint32(len(payload)))
		s.Write(payload)
		return s
	}
	f.Add(head().layout().record(10, 16).u64(1).u64(2).data(0, 1, 1).iteration(1, 1).state().done().Bytes())
	f.Add(head().layout().data(0, 1, 1).record(10, 16).u64(1).u64(2).Bytes())
	f.Add(head().Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		tgt := &migrationtest.DiskTarget{Target: migrationtest.Target{Sizes: []int{8 * page, 4 * page}}}
		rec, err := migration.Receive(context.Background(), &rw{Reader: bytes.NewReader(b)}, tgt, migration.ReceiveOptions{})
		if err == nil {
			if rec == nil || !tgt.Built[0].Restored {
				t.Fatal("accepted but not restored")
			}
			return
		}
		for _, in := range tgt.Built {
			if !in.Discarded || in.Restored {
				t.Fatal("a failed migration kept its VM")
			}
		}
	})
}

// segConn is a UNIX socket as a local migration's receiver sees it: the
// source's bytes come in segments, each readable only once the receiver
// has replied to the one before (a source waits for "send the memory"
// and "ready"), with descriptors attached to the second segment's first
// byte. A read past a segment the receiver has not answered yet is the
// end of the stream, as if the source gave up waiting.
type segConn struct {
	segs    [][]byte
	cur     int
	replies int
	fds     []int // attached to segment 1, the receiver's once read
	sent    bool
}

func (c *segConn) Read(b []byte) (int, error) {
	for len(c.segs[c.cur]) == 0 {
		if c.cur+1 >= len(c.segs) || c.replies <= c.cur {
			return 0, io.EOF
		}
		c.cur++
	}
	if c.cur == 1 && !c.sent {
		// Plain read(2) of bytes that carry descriptors: the kernel
		// closes them, and the receiver never sees them.
		c.drop()
	}
	n := copy(b, c.segs[c.cur])
	c.segs[c.cur] = c.segs[c.cur][n:]
	return n, nil
}

func (c *segConn) drop() {
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds, c.sent = nil, true
}

func (c *segConn) ReadMsgUnix(b, oob []byte) (n, oobn, flags int, addr *net.UnixAddr, err error) {
	for len(c.segs[c.cur]) == 0 {
		if c.cur+1 >= len(c.segs) || c.replies <= c.cur {
			return 0, 0, 0, nil, io.EOF
		}
		c.cur++
	}
	if c.cur == 1 && !c.sent {
		rights := unix.UnixRights(c.fds...)
		if len(c.fds) > 0 && len(rights) <= len(oob) {
			oobn = copy(oob, rights)
			c.fds, c.sent = nil, true
		} else if len(c.fds) > 0 {
			c.drop()
			flags = unix.MSG_CTRUNC
		}
		c.sent = true
	}
	n = copy(b, c.segs[c.cur])
	c.segs[c.cur] = c.segs[c.cur][n:]
	return n, oobn, flags, nil, nil
}

func (c *segConn) WriteMsgUnix(b, oob []byte, addr *net.UnixAddr) (int, int, error) {
	return len(b), len(oob), nil
}

func (c *segConn) Write(b []byte) (int, error) {
	c.replies++ // each reply is one write (writeReply)
	return len(b), nil
}

// FuzzReceiveLocal feeds arbitrary local migrations to the receiver: the
// bytes up to the memory record, the memory record, the rest, and a
// choice of descriptor to attach (kind: none, a good memfd for the test
// layout, one unsealed, one too short, two, a regular file). It must end
// in a VM restored on a memfd that passed every check, or an error with
// the VM discarded and every descriptor it received closed.
func FuzzReceiveLocal(f *testing.F) {
	start := func() []byte {
		s := new(stream)
		s.WriteString(migration.Magic)
		return s.u32(migration.Version).u32(1).config(`{}`).layout().Bytes()
	}()
	mem := new(stream).record(8, 16).u64(0).u64(8 * page).Bytes()
	f.Add(byte(1), start, mem, new(stream).state().done().Bytes())
	f.Add(byte(0), start, mem, new(stream).state().done().Bytes())
	f.Add(byte(2), start, mem, new(stream).state().done().Bytes())
	f.Add(byte(3), start, mem, new(stream).data(0, 0, 1).Bytes())
	f.Add(byte(4), start, new(stream).record(8, 16).u64(4*page).u64(0).Bytes(), new(stream).state().done().Bytes())
	f.Add(byte(5), start[:20], mem, []byte{})
	f.Fuzz(func(t *testing.T, kind byte, first, second, rest []byte) {
		const size = 12 * page
		var fds []int
		mk := func(size int64, seals int) {
			fd, err := unix.MemfdCreate("fuzz", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
			if err != nil {
				t.Fatal(err)
			}
			unix.Ftruncate(fd, size)
			if seals != 0 {
				unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals)
			}
			fds = append(fds, fd)
		}
		switch kind % 6 {
		case 1:
			mk(size, migrationtest.Seals)
		case 2:
			mk(size, 0)
		case 3:
			mk(size-page, migrationtest.Seals)
		case 4:
			mk(size, migrationtest.Seals)
			mk(size, migrationtest.Seals)
		case 5:
			fd, err := unix.Open(t.TempDir(), unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
			if err != nil {
				t.Skip("no O_TMPFILE here")
			}
			unix.Ftruncate(fd, size)
			fds = append(fds, fd)
		}
		// The receiver owns its copies; the test keeps the originals to
		// check that those copies were closed.
		var theirs []int
		var inodes []uint64
		for _, fd := range fds {
			d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			unix.Fstat(fd, &st)
			theirs, inodes = append(theirs, d), append(inodes, st.Ino)
		}
		defer func() {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}()
		c := &segConn{segs: [][]byte{bytes.Clone(first), bytes.Clone(second), bytes.Clone(rest)}, fds: theirs}
		tgt := &migrationtest.Target{Sizes: []int{8 * page, 4 * page}}
		rec, err := migration.Receive(context.Background(), c, tgt, migration.ReceiveOptions{})
		if !c.sent {
			c.drop() // never read: the test's to close
		}
		// Every copy handed over is closed now (the VM maps RAM, which
		// needs no descriptor), whatever the outcome.
		for i, fd := range theirs {
			var st unix.Stat_t
			if unix.Fstat(fd, &st) == nil && st.Ino == inodes[i] {
				t.Fatalf("the receiver left descriptor %d of the source's open", fd)
			}
		}
		if err == nil {
			if rec == nil || len(tgt.Built) != 1 || !tgt.Built[0].Restored || !tgt.Built[0].Shared {
				t.Fatal("accepted but not restored on shared RAM")
			}
			if kind%6 != 1 {
				t.Fatalf("accepted descriptor kind %d", kind%6)
			}
			tgt.Built[0].Discard()
			return
		}
		// An input that asks for pre-copy instead builds a VM on RAM of
		// its own (not Shared): Discard frees that, with nothing mapped.
		for _, in := range tgt.Built {
			if !in.Discarded || in.Restored || in.Shared && in.Regions != nil {
				t.Fatal("a failed migration kept its VM or its mapping")
			}
		}
	})
}
