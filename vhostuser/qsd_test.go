package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio/queuetest"
)

const qsdPath = "/usr/bin/qemu-storage-daemon"

// startQSD exports img as vhost-user-blk from a real qemu-storage-daemon.
// The listening socket is made here and handed over as fd 3, so the
// front-end can connect as soon as the process exists: connect completes
// on the listen backlog, with no polling for a socket file to appear.
func startQSD(t testing.TB, img string) *Frontend {
	t.Helper()
	if _, err := os.Stat(qsdPath); err != nil {
		t.Skipf("qemu-storage-daemon not installed: %v", err)
	}
	sock := filepath.Join(t.TempDir(), "blk.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false) // the file stays for the daemon
	lf, err := l.File()
	l.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	cmd := exec.Command(qsdPath,
		"--blockdev", "driver=file,node-name=f,filename="+img,
		"--export", "type=vhost-user-blk,id=e,node-name=f,addr.type=fd,addr.str=3,writable=on")
	cmd.ExtraFiles = []*os.File{lf}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("qemu-storage-daemon stderr:\n%s", stderr.String())
		}
	})
	f, err := Dial(sock, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

const (
	virtioFVersion1 = 1 << 32
	blkTIn          = 0
	blkTOut         = 1
	sector          = 512
)

func blkHeader(typ uint32, sec uint64) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint32(b[0:], typ)
	binary.LittleEndian.PutUint64(b[8:], sec)
	return b
}

func eventfd(t testing.TB) int {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// waitEvent blocks until the eventfd is signalled (or 10 s pass) and
// consumes the count.
func waitEvent(t testing.TB, fd int) {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, 10000)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatal("back-end did not signal the call eventfd within 10 s")
		}
		break
	}
	var b [8]byte
	if _, err := unix.Read(fd, b[:]); err != nil {
		t.Fatal(err)
	}
}

func kick(t testing.TB, fd int) {
	t.Helper()
	if _, err := unix.Write(fd, binary.LittleEndian.AppendUint64(nil, 1)); err != nil {
		t.Fatal(err)
	}
}

// qsdBlk is one virtio-blk queue served by qemu-storage-daemon.
type qsdBlk struct {
	f              *Frontend
	drv            *queuetest.Driver
	kickFD, callFD int
}

// newQSDBlk writes an image of imgSize bytes (a pattern that differs per
// sector), exports it, negotiates, checks the capacity and sets up queue 0.
func newQSDBlk(t testing.TB, imgSize int) (*qsdBlk, string, []byte) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.raw")
	content := make([]byte, imgSize)
	for i := range content {
		content[i] = byte(i*7 + i/sector)
	}
	if err := os.WriteFile(img, content, 0o600); err != nil {
		t.Fatal(err)
	}
	f := startQSD(t, img)

	features, proto, err := f.Negotiate(virtioFVersion1, ProtocolMQ|ProtocolReplyAck|ProtocolConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("features %#x protocol %#x", features, proto)
	if want := uint64(ProtocolMQ | ProtocolReplyAck | ProtocolConfig); proto != want {
		t.Fatalf("protocol features %#x, want %#x", proto, want)
	}
	if features&FProtocolFeatures == 0 || features&virtioFVersion1 == 0 {
		t.Fatalf("features %#x lack PROTOCOL_FEATURES or VERSION_1", features)
	}
	nq, err := f.GetQueueNum()
	if err != nil {
		t.Fatal(err)
	}
	if nq < 1 {
		t.Fatalf("%d queues", nq)
	}
	cfg, err := f.GetConfig(0, 8)
	if err != nil {
		t.Fatal(err)
	}
	if c := binary.LittleEndian.Uint64(cfg); c != uint64(imgSize/sector) {
		t.Fatalf("capacity %d sectors, want %d", c, imgSize/sector)
	}

	mem, err := memory.NewWithOptions([]memory.Layout{{GPA: 0, Size: 2 << 20}}, memory.Options{Backing: memory.Memfd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	if err := f.SetMemTable(mem); err != nil {
		t.Fatal(err)
	}
	const qsize = 64
	drv, err := queuetest.New(mem, 0x1000, qsize, 256<<10, false)
	if err != nil {
		t.Fatal(err)
	}
	kickFD, callFD := eventfd(t), eventfd(t)
	if err := f.SetVringNum(0, qsize); err != nil {
		t.Fatal(err)
	}
	if err := f.SetVringBase(0, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.SetVringAddrGPA(0, drv.Config()); err != nil {
		t.Fatal(err)
	}
	if err := f.SetVringKick(0, kickFD); err != nil {
		t.Fatal(err)
	}
	if err := f.SetVringCall(0, callFD); err != nil {
		t.Fatal(err)
	}
	if err := f.SetVringEnable(0, true); err != nil {
		t.Fatal(err)
	}
	return &qsdBlk{f: f, drv: drv, kickFD: kickFD, callFD: callFD}, img, content
}

// do submits one chain, kicks if the ring asks for it, and waits for the
// chain to come back.
func (q *qsdBlk) do(t testing.TB, out [][]byte, in []uint32) queuetest.Used {
	t.Helper()
	head, err := q.drv.Add(out, in)
	if err != nil {
		t.Fatal(err)
	}
	if q.drv.NeedsKick() {
		kick(t, q.kickFD)
	}
	// A call may be spurious (libvhost-user signals a new call fd
	// once, in case a reconnected driver missed one), so wait until
	// the used entry is there, as a driver's interrupt handler does.
	var u queuetest.Used
	for i := 0; ; i++ {
		if i == 3 {
			t.Fatal("three calls without a used entry")
		}
		waitEvent(t, q.callFD)
		var ok bool
		u, ok, err = q.drv.GetUsed()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
	}
	if u.ID != head {
		t.Fatalf("used id %d, want %d", u.ID, head)
	}
	return u
}

func TestQSDBlk(t *testing.T) {
	q, img, content := newQSDBlk(t, 1<<20)

	// READ sector 0.
	u := q.do(t, [][]byte{blkHeader(blkTIn, 0)}, []uint32{sector, 1})
	if u.Len != sector+1 || len(u.Data) != sector+1 {
		t.Fatalf("read used len %d (%d bytes)", u.Len, len(u.Data))
	}
	if st := u.Data[sector]; st != 0 {
		t.Fatalf("read status %d", st)
	}
	if !bytes.Equal(u.Data[:sector], content[:sector]) {
		t.Fatal("sector 0 read through the back-end differs from the image")
	}

	// WRITE sector 5; read it back through the device, then from the
	// image file directly.
	pattern := bytes.Repeat([]byte("vio-vhost-user!!"), sector/16)
	u = q.do(t, [][]byte{blkHeader(blkTOut, 5), pattern}, []uint32{1})
	if len(u.Data) != 1 || u.Data[0] != 0 {
		t.Fatalf("write used len %d data %v", u.Len, u.Data)
	}
	u = q.do(t, [][]byte{blkHeader(blkTIn, 5)}, []uint32{sector, 1})
	if len(u.Data) != sector+1 {
		t.Fatalf("read-back used len %d", u.Len)
	}
	if u.Data[sector] != 0 || !bytes.Equal(u.Data[:sector], pattern) {
		t.Fatalf("sector 5 read back through the back-end: status %d, data %x...", u.Data[sector], u.Data[:16])
	}
	disk, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk[5*sector:6*sector], pattern) {
		t.Fatalf("sector 5 of the image does not hold what was written (it starts %x)", disk[5*sector:5*sector+16])
	}
	if !bytes.Equal(disk[4*sector:5*sector], content[4*sector:5*sector]) ||
		!bytes.Equal(disk[6*sector:7*sector], content[6*sector:7*sector]) {
		t.Fatal("write spilled into a neighbouring sector")
	}

	base, err := q.f.GetVringBase(0)
	if err != nil {
		t.Fatal(err)
	}
	if base != 3 {
		t.Fatalf("vring base %d after three requests, want 3", base)
	}
}

// BenchmarkQSDRead4K measures one 4 KiB read through the back-end: kick
// eventfd, qemu-storage-daemon's processing (page cache hit), call eventfd.
func BenchmarkQSDRead4K(b *testing.B) {
	q, _, _ := newQSDBlk(b, 1<<20)
	b.SetBytes(4096)
	for i := 0; b.Loop(); i++ {
		u := q.do(b, [][]byte{blkHeader(blkTIn, uint64(i%256)*8)}, []uint32{4096, 1})
		if len(u.Data) != 4097 || u.Data[4096] != 0 {
			b.Fatalf("read: used len %d", u.Len)
		}
	}
}
