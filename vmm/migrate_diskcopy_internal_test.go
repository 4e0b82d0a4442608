package vmm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/handoff"
	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/migration"
)

// These tests migrate real VMs (diskRig's: a raw and a qcow2 disk) whose
// disks are not on shared storage: the destination's images are other,
// empty files of the same sizes (disk_paths), which the source copies
// into over NBD through the migration's TCP listener while the guest
// writes.

// dstImages creates the destination's empty images, of the rig's sizes
// unless sizes says otherwise, and returns disk_paths for them.
func (r *diskRig) dstImages(t *testing.T, sizes map[string]int64) map[string]string {
	t.Helper()
	paths := map[string]string{}
	dir := t.TempDir()
	for id, format := range rigFormats {
		size := map[string]int64{"raw": rigRawSize, "qc": rigQcowSize}[id]
		if s, ok := sizes[id]; ok {
			size = s
		}
		p := filepath.Join(dir, "dst-"+id+"."+format)
		if size >= 0 {
			if err := image.Create(p, image.CreateOptions{Format: format, Size: size, ClusterSize: 4096 * map[string]int{"raw": 0, "qc": 1}[id]}); err != nil {
				t.Fatal(err)
			}
		}
		paths[id] = p
	}
	return paths
}

// receiveTCP has dst receive a migration on a free TCP port of loopback
// with disk_paths, and returns the URL once it listens there.
func receiveTCP(t *testing.T, ctx context.Context, dst *Controller, paths map[string]string) (string, <-chan error) {
	t.Helper()
	mon := events.NewMonitor()
	sub := mon.Subscribe(256)
	dst.SetEvents(mon)
	recv := make(chan error, 1)
	go func() {
		recv <- dst.ReceiveMigration(ctx, ReceiveMigration{ReceiverURL: "tcp:127.0.0.1:0", DiskPaths: paths})
	}()
	for {
		select {
		case e := <-sub.Events():
			if e.Event == "receiving-migration" {
				return e.Properties["receiver_url"], recv
			}
		case err := <-recv:
			t.Fatalf("the destination stopped before it listened: %v", err)
		case <-ctx.Done():
			t.Fatal("the destination never listened")
		}
	}
}

// guestWriter writes random blocks to a VM's disks, one write at a time,
// and keeps what each disk must hold.
type guestWriter struct {
	disks  map[string]block.Backend
	model  map[string][]byte
	rng    *rand.Rand
	writes int
}

func newGuestWriter(t *testing.T, v *VM) *guestWriter {
	w := &guestWriter{disks: map[string]block.Backend{}, model: map[string][]byte{}, rng: rand.New(rand.NewPCG(1, 2))}
	for id := range rigFormats {
		b := disk(t, v, id)
		w.disks[id], w.model[id] = b, make([]byte, b.Size())
	}
	return w
}

// write writes one block of 4 to 64 KiB at a 512-byte aligned offset
// (some all zeroes, which the copy sends as write-zeroes).
func (w *guestWriter) write() error {
	id := []string{"raw", "qc"}[w.rng.IntN(2)]
	m := w.model[id]
	n := (1 + w.rng.IntN(16)) * 4096
	off := w.rng.IntN((len(m)-n)/512) * 512
	p := make([]byte, n)
	if w.rng.IntN(4) != 0 {
		for i := range p {
			p[i] = byte(w.rng.Uint32())
		}
	}
	if _, err := w.disks[id].WriteAt(p, int64(off)); err != nil {
		return err
	}
	copy(m[off:], p)
	w.writes++
	return nil
}

// wantImage checks that an image (closed by everyone) holds want, read
// through vio's own raw or qcow2.
func wantImage(t *testing.T, path, format string, want []byte, what string) {
	t.Helper()
	b, err := image.Open(path, image.OpenOptions{Format: format, ReadOnly: true})
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	defer b.Close()
	if b.Size() != int64(len(want)) {
		t.Fatalf("%s is %d bytes, want %d", what, b.Size(), len(want))
	}
	got := make([]byte, len(want))
	if _, err := b.ReadAt(got, 0); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !bytes.Equal(got, want) {
		for off := 0; off < len(got); off += 512 {
			if !bytes.Equal(got[off:off+512], want[off:off+512]) {
				t.Fatalf("%s differs first at byte %#x", what, off)
			}
		}
	}
}

// writingCopier is the VM's disk copy with a guest writing while it
// runs: from Start until RAM's pre-copy, with at least minWrites of its
// own (not counting the guest's earlier ones) before package migration
// hears the disks are in sync.
type writingCopier struct {
	*diskCopy
	w         *guestWriter
	minWrites int
	stop      chan struct{}
	wg        sync.WaitGroup
	ready     chan struct{}
	err       error
}

func (c *writingCopier) Start(token migration.Token) error {
	if err := c.diskCopy.Start(token); err != nil {
		return err
	}
	c.ready = make(chan struct{})
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		told := false
		before := c.w.writes
		for {
			if !told && c.w.writes-before >= c.minWrites {
				// Ready only once the copy is, and the guest wrote.
				go func() { <-c.diskCopy.Ready(); close(c.ready) }()
				told = true
			}
			select {
			case <-c.stop:
				return
			default:
			}
			if err := c.w.write(); err != nil {
				c.err = err
				if !told {
					close(c.ready)
				}
				return
			}
		}
	}()
	return nil
}

func (c *writingCopier) Ready() <-chan struct{} { return c.ready }

// halt stops the writer (once) and reports its error.
func (c *writingCopier) halt() error {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.wg.Wait()
	return c.err
}

// A VM migrates over TCP with both disks copied into other files: the
// guest writes before the migration, all through the disks' copy, and
// during RAM's pre-copy; at the end the destination's images hold exactly
// what the guest wrote, as the source's do, the destination runs on its
// own files (locked) and the source's images are released.
func TestMigrationCopiesDisks(t *testing.T) {
	r := newDiskRig(t, false)
	src := r.source(t)
	sv := vmOf(t, src)
	w := newGuestWriter(t, sv)
	for range 50 {
		if err := w.write(); err != nil {
			t.Fatal(err)
		}
	}
	paths := r.dstImages(t, nil)
	dst := destination(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url, recv := receiveTCP(t, ctx, dst, paths)
	ep, err := migration.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := sv.migrationSource(ctx, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ms.release()
	if ms.copy, err = sv.newDiskCopy(ctx, nil, true, ep, nil); err != nil {
		t.Fatal(err)
	}
	wc := &writingCopier{diskCopy: ms.copy, w: w, minWrites: 100, stop: make(chan struct{})}
	defer wc.halt()
	duringRAM := 0
	g := &growingSource{migrationSource: ms, grow: func() {
		// RAM's first collection: the disks are in sync, and each write
		// now goes to both sides as it happens.
		if err := wc.halt(); err != nil {
			t.Errorf("the guest's write during the disks' copy: %v", err)
		}
		for range 30 {
			if err := w.write(); err != nil {
				t.Errorf("the guest's write during pre-copy: %v", err)
			}
			duringRAM++
		}
	}}
	conn, err := migration.Dial(ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stats, err := migration.Send(ctx, conn, g, migration.Options{Disks: wc})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if err := <-recv; err != nil {
		t.Fatalf("ReceiveMigration: %v", err)
	}
	if duringRAM != 30 || w.writes < 180 {
		t.Fatalf("the guest wrote %d times in all, %d during pre-copy: the test did not write through the copy", w.writes, duringRAM)
	}
	if stats.DiskBytes != rigRawSize+rigQcowSize || stats.DiskTime <= 0 {
		t.Fatalf("stats: %d disk bytes in %v, want every byte of both disks", stats.DiskBytes, stats.DiskTime)
	}
	wantControllerState(t, dst, StateRunning, "the destination")
	dv := vmOf(t, dst)
	for id := range rigFormats {
		if got := dv.cfg.Disks[map[string]int{"raw": 0, "qc": 1}[id]].Path; got != paths[id] {
			t.Fatalf("the destination's disk %s runs on %s, want its own %s", id, got, paths[id])
		}
		// The destination reads what the guest wrote, through its VM.
		got := make([]byte, len(w.model[id]))
		if _, err := disk(t, dv, id).ReadAt(got, 0); err != nil || !bytes.Equal(got, w.model[id]) {
			t.Fatalf("disk %s at the destination does not hold what the guest wrote (%v)", id, err)
		}
		// Its own image is locked by it; the source's was released.
		if b, err := image.Open(paths[id], image.OpenOptions{Format: rigFormats[id], Lock: true}); err == nil {
			b.Close()
			t.Fatalf("disk %s: another writer opened the destination's image while it runs", id)
		}
		b, err := r.openOther(id)
		if err != nil {
			t.Fatalf("disk %s: the source did not release its image: %v", id, err)
		}
		b.Close()
	}
	if err := dst.Shutdown(); err != nil {
		t.Fatal(err)
	}
	for id, format := range rigFormats {
		wantImage(t, paths[id], format, w.model[id], "the destination's image of disk "+id)
		wantImage(t, r.path(id), format, w.model[id], "the source's image of disk "+id)
	}
	res, _, err := image.Check(paths["qc"], image.ToolOptions{Format: image.Qcow2})
	if err != nil || res.Corruptions != 0 || res.Leaks != 0 {
		t.Fatalf("the destination's qcow2 image: %+v, %v", res, err)
	}
}

// Through the Controller (vm.send-migration with copy_disks): a disk the
// destination cannot take (no image there, one of another size, the
// source's own image on one host) fails the migration with one sentence
// naming the disk and what to do, before anything is copied; the source
// runs on, on its own images, untouched and with no copy in front; the
// destination has no VM. Then, with the right images, the same VM
// migrates, its data whole.
func TestMigrationCopyRefused(t *testing.T) {
	r := newDiskRig(t, false)
	src := r.source(t)
	sv := vmOf(t, src)
	w := newGuestWriter(t, sv)
	for range 40 {
		if err := w.write(); err != nil {
			t.Fatal(err)
		}
	}
	for name, c := range map[string]struct {
		paths func() map[string]string
		want  func(paths map[string]string) string
	}{
		"too small": {func() map[string]string { return r.dstImages(t, map[string]int64{"qc": rigQcowSize - 4096}) },
			func(p map[string]string) string {
				return "disk qc: the image " + p["qc"] + " here is 67104768 bytes, the source's disk 67108864: create it with exactly the source's size"
			}},
		"missing": {func() map[string]string { return r.dstImages(t, map[string]int64{"raw": -1}) },
			func(p map[string]string) string {
				return "disk raw: there is no image at " + p["raw"] + " here to copy it into: create an empty one of 8388608 bytes there"
			}},
		"the source's own": {func() map[string]string { return map[string]string{"raw": r.raw} },
			func(map[string]string) string {
				return "disk raw: the image " + r.raw + " here is in use by another process"
			}},
	} {
		t.Run(name, func(t *testing.T) {
			paths := c.paths()
			want := c.want(paths)
			dst := destination(t, nil, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			url, recv := receiveTCP(t, ctx, dst, paths)
			ids := []string{}
			for id := range paths {
				ids = append(ids, id)
			}
			sendErr := src.SendMigration(ctx, SendMigration{DestinationURL: url, CopyDisks: ids})
			recvErr := <-recv
			if sendErr == nil || !errors.Is(sendErr, migration.ErrDestination) || !strings.Contains(sendErr.Error(), want) {
				t.Fatalf("the source: %v\nwant it to say: %s", sendErr, want)
			}
			if recvErr == nil || !strings.Contains(recvErr.Error(), want) {
				t.Fatalf("the destination: %v", recvErr)
			}
			wantControllerState(t, src, StateRunning, "the source")
			wantControllerState(t, dst, NoVM, "the destination")
			for id := range rigFormats {
				if disk(t, sv, id).(*handoff.Disk).Interposed() {
					t.Fatalf("disk %s kept a copy in front of its image", id)
				}
				got := make([]byte, len(w.model[id]))
				if _, err := disk(t, sv, id).ReadAt(got, 0); err != nil || !bytes.Equal(got, w.model[id]) {
					t.Fatalf("disk %s at the source lost data (%v)", id, err)
				}
			}
			r.wantLocked(t, "the source after the refused migration")
			if err := w.write(); err != nil {
				t.Fatalf("the source's guest cannot write after the refused migration: %v", err)
			}
		})
	}

	paths := r.dstImages(t, nil)
	dst := destination(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url, recv := receiveTCP(t, ctx, dst, paths)
	if err := src.SendMigration(ctx, SendMigration{DestinationURL: url, CopyAllDisks: true}); err != nil {
		t.Fatalf("the source: %v", err)
	}
	if err := <-recv; err != nil {
		t.Fatalf("the destination: %v", err)
	}
	wantControllerState(t, src, StateShutdown, "the source")
	if err := dst.Shutdown(); err != nil {
		t.Fatal(err)
	}
	for id, format := range rigFormats {
		wantImage(t, paths[id], format, w.model[id], "the destination's image of disk "+id)
	}
}

// A copy that fails while the disks sync (the destination's export goes
// away) fails the migration; the source drops the copy and runs on its
// own image, which has every write the guest made, before and after.
func TestMigrationCopyFailsMidway(t *testing.T) {
	r := newDiskRig(t, false)
	src := r.source(t)
	sv := vmOf(t, src)
	w := newGuestWriter(t, sv)
	paths := r.dstImages(t, nil)
	dst := destination(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url, recv := receiveTCP(t, ctx, dst, paths)
	p := newTCPProxy(t, strings.TrimPrefix(url, "tcp:"))
	ep, _ := migration.ParseURL("tcp:" + p.addr)
	ms, err := sv.migrationSource(ctx, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ms.release()
	if ms.copy, err = sv.newDiskCopy(ctx, nil, true, ep, nil); err != nil {
		t.Fatal(err)
	}
	fc := &failingCopier{diskCopy: ms.copy, w: w, p: p}
	conn, err := migration.Dial(ctx, ep)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, sendErr := migration.Send(ctx, conn, ms, migration.Options{Disks: fc})
	conn.Close() // as SendMigration does: the destination hears the end
	if sendErr == nil || !strings.Contains(sendErr.Error(), "its copy at the destination failed") {
		t.Fatalf("Send: %v", sendErr)
	}
	ms.copy.abort() // as SendMigration does when Send fails
	if err := <-recv; err == nil {
		t.Fatal("the destination received a migration whose disk copy failed")
	}
	if !fc.cut {
		t.Fatal("the test never cut the destination's disk connections")
	}
	for id := range rigFormats {
		if disk(t, sv, id).(*handoff.Disk).Interposed() {
			t.Fatalf("disk %s kept a copy in front of its image", id)
		}
	}
	for range 20 {
		if err := w.write(); err != nil {
			t.Fatalf("the source's guest after the failed copy: %v", err)
		}
	}
	wantControllerState(t, src, StateRunning, "the source")
	ms.release() // the migration is over: the VM may close
	if err := src.Shutdown(); err != nil {
		t.Fatal(err)
	}
	for id, format := range rigFormats {
		wantImage(t, r.path(id), format, w.model[id], "the source's image of disk "+id)
	}
}

// failingCopier cuts the copy's connections to the destination once it
// started (the proxy closes them and refuses new ones, so the NBD
// client's reconnects fail too), with the guest writing before and after.
type failingCopier struct {
	*diskCopy
	w   *guestWriter
	p   *tcpProxy
	cut bool
}

func (c *failingCopier) Start(token migration.Token) error {
	if err := c.diskCopy.Start(token); err != nil {
		return err
	}
	for range 20 {
		if err := c.w.write(); err != nil {
			return err
		}
	}
	c.p.cutAfterFirst()
	c.cut = true
	for range 20 {
		if err := c.w.write(); err != nil {
			return err
		}
	}
	return nil
}

// tcpProxy forwards every connection on a loopback port to to; after
// cutAfterFirst only the first (the migration stream) goes on.
type tcpProxy struct {
	addr string
	mu   sync.Mutex
	cs   [][2]net.Conn
	cut  bool
}

func newTCPProxy(t *testing.T, to string) *tcpProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{addr: l.Addr().String()}
	t.Cleanup(func() {
		l.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.cs {
			c[0].Close()
			c[1].Close()
		}
	})
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				in.Close()
				continue
			}
			out, err := net.Dial("tcp", to)
			if err != nil {
				p.mu.Unlock()
				in.Close()
				continue
			}
			p.cs = append(p.cs, [2]net.Conn{in, out})
			p.mu.Unlock()
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
	return p
}

func (p *tcpProxy) cutAfterFirst() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for _, c := range p.cs[1:] {
		c[0].Close()
		c[1].Close()
	}
}
