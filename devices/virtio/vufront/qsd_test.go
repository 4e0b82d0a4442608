package vufront_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/devices/virtio/vufront"
)

const qsdPath = "/usr/bin/qemu-storage-daemon"

// daemon is a back-end process the tests start and kill: vio's own
// (backendProc) or qemu-storage-daemon.
type daemon struct {
	cmd    *exec.Cmd
	stderr logBuffer
}

// startDaemon starts cmd as a back-end on sock, which it gets as an
// already listening fd 3: a front-end may connect as soon as this
// returns, with no polling for the socket file. A stale socket file (a
// killed daemon's) is replaced. The daemon is killed when the test ends,
// and its stderr logged if the test failed.
func startDaemon(t testing.TB, sock, what string, cmd *exec.Cmd) *daemon {
	t.Helper()
	os.Remove(sock)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	lf, err := l.File()
	l.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	d := &daemon{cmd: cmd}
	cmd.ExtraFiles = []*os.File{lf}
	cmd.Stderr = &d.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.kill()
		if t.Failed() {
			t.Logf("%s stderr:\n%s", what, d.stderr.String())
		}
	})
	return d
}

// kill is SIGKILL: the daemon gets no chance to finish or return
// anything.
func (d *daemon) kill() {
	if d.cmd.ProcessState == nil {
		d.cmd.Process.Kill()
		d.cmd.Wait()
	}
}

// startQSD starts qemu-storage-daemon exporting img as vhost-user-blk on
// sock (see startDaemon).
func startQSD(t testing.TB, img, sock string) *daemon {
	t.Helper()
	if _, err := os.Stat(qsdPath); err != nil {
		t.Skipf("qemu-storage-daemon not installed: %v", err)
	}
	return startDaemon(t, sock, "qemu-storage-daemon", exec.Command(qsdPath,
		"--blockdev", "driver=file,node-name=f,filename="+img,
		"--export", "type=vhost-user-blk,id=e,node-name=f,addr.type=fd,addr.str=3,writable=on,num-queues=2"))
}

func rawImage(t testing.TB, size int64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	return img
}

func TestQSDWriteRead(t *testing.T) {
	img := rawImage(t, 4<<20)
	sock := filepath.Join(t.TempDir(), "qsd.sock")
	startQSD(t, img, sock)
	m := newMachine(t, sharedRAM(t), vufront.Config{Socket: sock})
	if c := m.mc.Guest.ReadDeviceConfig(0, 8); c != (4<<20)/sector {
		t.Fatalf("capacity %d sectors", c)
	}
	m.start(t, true)
	for q := range m.queues {
		m.write(t, q, uint64(7+q), pattern(q))
		if got := m.read(t, q, uint64(7+q)); !bytes.Equal(got, pattern(q)) {
			t.Fatalf("queue %d: read back differs", q)
		}
	}
}

// killable is a back-end process a test can SIGKILL.
type killable interface{ kill() }

func startQSDProc(t testing.TB, img, sock string) killable { return startQSD(t, img, sock) }

// TestKilledMidLoad keeps writes in flight on each queue, SIGKILLs the
// back-end process partway and starts another on the same socket: every
// request completes exactly once, with status OK, and the image holds
// every write; the guest never sees DEVICE_NEEDS_RESET. vio's back-end
// keeps an inflight region (INFLIGHT_SHMFD) and is loaded with 16 writes
// per queue; the first one never finishes the writes from sector 100 on,
// so it is killed with 32 taken and not completed, which the next one
// must find in the region and complete. The qemu-storage-daemon here offers no INFLIGHT_SHMFD
// (protocol features MQ, REPLY_ACK and CONFIG only): a restarted one
// resumes from the used index, which loses or repeats requests the
// killed one completed out of order, so it gets one write per queue at
// a time, which a restart from the used index resumes exactly.
func TestKilledMidLoad(t *testing.T) {
	for _, b := range []struct {
		name         string
		first, again func(t testing.TB, img, sock string) killable
		depth        int
	}{
		{"vio", startHoldingBackendProc(killAt), startBackendProc, 16},
		{"qsd", startQSDProc, startQSDProc, 1},
	} {
		t.Run(b.name, func(t *testing.T) { killedMidLoad(t, b.first, b.again, b.depth) })
	}
}

// killAt is the number of completions after which the back-end is
// killed (and the sector from which the holding back-end stops).
const killAt = 100

func killedMidLoad(t *testing.T, start, restart func(t testing.TB, img, sock string) killable, depth int) {
	const total = 600 // writes, each to a sector of its own
	img := rawImage(t, 4<<20)
	sock := filepath.Join(t.TempDir(), "be.sock")
	d := start(t, img, sock)
	m := newMachine(t, sharedRAM(t), vufront.Config{Socket: sock})
	m.start(t, true)
	if !m.dev.Inflight() && depth > 1 {
		t.Fatalf("the back-end keeps no inflight region: a restart is exact only at depth 1, not %d", depth)
	}
	nq := len(m.queues)
	outstanding := make([]map[uint16]int, nq) // head → request
	for q := range outstanding {
		outstanding[q] = map[uint16]int{}
	}
	pending := func() (n int) {
		for _, o := range outstanding {
			n += len(o)
		}
		return n
	}
	next, completed, killed := 0, 0, false
	for completed < total {
		for q := range nq {
			for len(outstanding[q]) < depth && next < total {
				h := m.submit(t, q, [][]byte{header(blk.TypeOut, uint64(next)), pattern(next)}, []uint32{1})
				if _, dup := outstanding[q][h]; dup {
					t.Fatalf("queue %d: head %d reused while in flight", q, h)
				}
				outstanding[q][h] = next
				next++
			}
		}
		if !killed && completed >= killAt {
			t.Logf("killing the back-end with %d requests in flight", pending())
			d.kill()
			d = restart(t, img, sock)
			killed = true
			continue
		}
		q := completed % nq
		if len(outstanding[q]) == 0 {
			q = 1 - q
		}
		u := m.next(t, q)
		req, ok := outstanding[q][u.ID]
		if !ok {
			t.Fatalf("queue %d: head %d completed but not in flight (completed twice?)", q, u.ID)
		}
		if u.Data[0] != blk.StatusOK {
			t.Fatalf("write %d: status %d", req, u.Data[0])
		}
		delete(outstanding[q], u.ID)
		completed++
	}
	// The kill happened, and the reconnection: a request after it
	// completed. Nothing more comes.
	for i := range 4 {
		if got := m.read(t, i%nq, uint64(i*100)); !bytes.Equal(got, pattern(i*100)) {
			t.Fatalf("read of sector %d through the new back-end differs", i*100)
		}
	}
	if n := m.dev.Reconnects(); n != 1 {
		t.Fatalf("%d reconnections, want 1", n)
	}
	if p, ok := d.(*backendProc); ok && !p.resumed() {
		t.Fatal("the restarted back-end did not resubmit the held writes from the inflight region")
	}
	for q, d := range m.queues {
		if u, ok, _ := d.GetUsed(); ok {
			t.Fatalf("queue %d: extra completion of head %d", q, u.ID)
		}
	}
	f, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for i := range total {
		if !bytes.Equal(f[i*sector:(i+1)*sector], pattern(i)) {
			t.Fatalf("sector %d does not hold write %d", i, i)
		}
	}
}

// TestQSDPauseDrains pauses the device while qemu-storage-daemon still
// works on writes it took (a throttle group lets through 20 a second, so
// the eight submitted take about 400 ms): libvhost-user closes a ring's
// call eventfd at GET_VRING_BASE and panics ("Error writing eventfd: Bad
// file descriptor") when a taken request completes after it, so the
// pause must let the daemon finish first. The pause succeeds with every
// write completed, and the daemon (alive) serves again after Resume.
func TestQSDPauseDrains(t *testing.T) {
	img := rawImage(t, 4<<20)
	sock := filepath.Join(t.TempDir(), "qsd.sock")
	if _, err := os.Stat(qsdPath); err != nil {
		t.Skipf("qemu-storage-daemon not installed: %v", err)
	}
	startDaemon(t, sock, "qemu-storage-daemon", exec.Command(qsdPath,
		"--object", "throttle-group,id=tg,x-iops-total=20",
		"--blockdev", "driver=file,node-name=f,filename="+img,
		"--blockdev", "driver=throttle,node-name=t,throttle-group=tg,file=f",
		"--export", "type=vhost-user-blk,id=e,node-name=t,addr.type=fd,addr.str=3,writable=on,num-queues=1"))
	m := newMachine(t, sharedRAM(t), vufront.Config{Socket: sock})
	m.start(t, false)
	const n = 8
	for i := range n {
		m.submit(t, 0, [][]byte{header(blk.TypeOut, uint64(10+i)), pattern(10 + i)}, []uint32{1})
	}
	// The first completion: the daemon has taken the writes, which its
	// throttle now lets through one by one.
	if u := m.next(t, 0); u.Data[0] != blk.StatusOK {
		t.Fatalf("a write completed with status %d", u.Data[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := m.mc.Transport.Pause(ctx); err != nil {
		t.Fatalf("Pause with writes on the daemon: %v (its stderr follows the test)", err)
	}
	if got := m.queues[0].UsedIdx(); got != n {
		t.Fatalf("used index %d after the pause, want all %d writes completed", got, n)
	}
	for range n - 1 {
		if u := m.next(t, 0); u.Data[0] != blk.StatusOK {
			t.Fatalf("a write completed with status %d", u.Data[0])
		}
	}
	m.mc.Transport.Resume()
	m.write(t, 0, 30, pattern(30))
	for i := range n {
		if got := m.read(t, 0, uint64(10+i)); !bytes.Equal(got, pattern(10+i)) {
			t.Fatalf("sector %d does not hold its write", 10+i)
		}
	}
}
