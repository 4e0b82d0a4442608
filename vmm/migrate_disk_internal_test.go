package vmm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/block/handoff"
	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/loader/loadertest"
	"github.com/viovmm/vio/migration"
)

// These tests migrate real VMs (KVM, even a PVM-only one: the guest only
// halts) with a writable raw and a writable qcow2 disk between two
// Controllers of this process. The image locks are real: OFD locks
// conflict between two open file descriptions of one process as between
// two processes, so the destination can only open a disk once the source
// has let it go.

// idleEntry is the synthetic kernel's 64-bit entry: sti; hlt; jmp back
// to the hlt. With no interrupt source programmed the vCPU sleeps in KVM,
// and a pause kicks it out.
var idleEntry = []byte{0xfb, 0xf4, 0xeb, 0xfd}

// diskRig is a source VM's config and images.
type diskRig struct {
	dir, raw, qcow string
	cfg            *config.VM
}

const (
	rigRawSize  = 8 << 20
	rigQcowSize = 64 << 20
)

// Formats by disk id.
var rigFormats = map[string]string{"raw": image.Raw, "qc": image.Qcow2}

func newDiskRig(t *testing.T, shared bool) *diskRig {
	t.Helper()
	dir := t.TempDir()
	r := &diskRig{dir: dir, raw: filepath.Join(dir, "disk.raw"), qcow: filepath.Join(dir, "disk.qcow2")}
	opts := loadertest.Default()
	opts.Entry64 = idleEntry
	kernel := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(kernel, loadertest.BzImage(opts), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := image.Create(r.raw, image.CreateOptions{Format: image.Raw, Size: rigRawSize}); err != nil {
		t.Fatal(err)
	}
	// 4 KiB clusters: an L2 table covers 2 MiB, so a write far from the
	// others needs a table the image did not have before.
	if err := image.Create(r.qcow, image.CreateOptions{Format: image.Qcow2, Size: rigQcowSize, ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Payload.Kernel = kernel
	cfg.Memory.Size, cfg.Memory.Shared = config.MinMemory, shared
	cfg.Serial.Mode = config.ModeOff
	cfg.Disks = []config.Disk{
		{ID: "raw", Path: r.raw, ImageType: config.ImageRaw},
		{ID: "qc", Path: r.qcow, ImageType: config.ImageQcow2},
	}
	r.cfg = cfg
	return r
}

func (r *diskRig) path(id string) string {
	if id == "raw" {
		return r.raw
	}
	return r.qcow
}

// openOther opens a disk's image as another process would, writable and
// locked.
func (r *diskRig) openOther(id string) (block.Backend, error) {
	return image.Open(r.path(id), image.OpenOptions{Format: rigFormats[id], Lock: true})
}

// locked says why not every disk is held by a VM (another writer is
// refused), or "" if all are.
func (r *diskRig) locked(who string) string {
	for id := range rigFormats {
		b, err := r.openOther(id)
		if err == nil {
			b.Close()
			return "disk " + id + ": another writer got in while " + who + " should hold it"
		}
		if !errors.Is(err, raw.ErrLocked) {
			return "disk " + id + ": another writer: " + err.Error() + ", want a lock conflict"
		}
	}
	return ""
}

// free says why another writer cannot open (and close) every disk, or ""
// if it can.
func (r *diskRig) free(when string) string {
	for id := range rigFormats {
		b, err := r.openOther(id)
		if err != nil {
			return "disk " + id + " " + when + ": " + err.Error()
		}
		b.Close()
	}
	return ""
}

func (r *diskRig) wantLocked(t *testing.T, who string) {
	t.Helper()
	if why := r.locked(who); why != "" {
		t.Fatal(why)
	}
}

var testOpts = Options{AllowPVM: true}

// source boots the rig's VM in a Controller.
func (r *diskRig) source(t *testing.T) *Controller {
	t.Helper()
	c := NewController(Builder(IO{}, testOpts), nil)
	if err := c.Create(r.cfg.Clone()); err != nil {
		t.Fatal(err)
	}
	if err := c.Boot(); err != nil {
		if errors.Is(err, ErrNoKVM) {
			t.Skip("no /dev/kvm here")
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Shutdown(); c.Delete() })
	return c
}

// vmOf returns the Controller's running VM.
func vmOf(t *testing.T, c *Controller) *VM {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.run == nil {
		t.Fatal("the Controller has no VM")
	}
	switch m := c.run.m.(type) {
	case *VM:
		return m
	case *hookedIncoming:
		return m.IncomingMachine.(*VM)
	case *checkedIncoming:
		return m.IncomingMachine.(*VM)
	}
	t.Fatalf("the Controller's Machine is a %T", c.run.m)
	return nil
}

func disk(t *testing.T, v *VM, id string) block.Backend {
	t.Helper()
	b := v.diskByID(id)
	if b == nil {
		t.Fatalf("the VM has no disk %s", id)
	}
	return b
}

func write(t *testing.T, b block.Backend, p []byte, off int64) {
	t.Helper()
	if _, err := b.WriteAt(p, off); err != nil {
		t.Fatalf("writing at %#x: %v", off, err)
	}
}

func wantData(t *testing.T, b block.Backend, p []byte, off int64, what string) {
	t.Helper()
	got := make([]byte, len(p))
	if _, err := b.ReadAt(got, off); err != nil {
		t.Fatalf("%s: reading at %#x: %v", what, off, err)
	}
	if !bytes.Equal(got, p) {
		t.Fatalf("%s: at %#x the disk holds %q..., want %q...", what, off, got[:16], p[:16])
	}
}

// hookedIncoming is a migration's destination VM whose TakeResources runs the
// test's hook around the real one.
type hookedIncoming struct {
	IncomingMachine
	take func(IncomingMachine) error
}

func (h *hookedIncoming) TakeResources() error { return h.take(h.IncomingMachine) }

// destination returns a Controller that receives migrations with real
// VMs; built, if set, runs on each right after it is built, and take, if
// set, instead of its TakeResources (calling the real one itself).
func destination(t *testing.T, built func(*VM), take func(IncomingMachine) error) *Controller {
	t.Helper()
	c := NewController(Builder(IO{}, testOpts), nil)
	real := Receiver(IO{}, testOpts)
	c.SetReceive(func(cfg *config.VM, ram *migration.SharedRAM) (IncomingMachine, error) {
		m, err := real(cfg, ram)
		if err != nil {
			return nil, err
		}
		if built != nil {
			built(m.(*VM))
		}
		if take == nil {
			return m, nil
		}
		return &hookedIncoming{IncomingMachine: m, take: take}, nil
	})
	t.Cleanup(func() { c.Shutdown(); c.Delete() })
	return c
}

// migrate receives at dst (on a UNIX socket in dir) what src sends, and
// returns both sides' errors. via, if set, stands between them: src sends
// to the address it returns.
func migrate(t *testing.T, dir string, src, dst *Controller, local bool, via func(dst string) string) (sendErr, recvErr error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sock, recv := receive(t, ctx, dir, dst)
	to := sock
	if via != nil {
		to = via(sock)
	}
	sendErr = src.SendMigration(ctx, SendMigration{DestinationURL: "unix:" + to, Local: local})
	return sendErr, <-recv
}

// receive has dst receive a migration on a UNIX socket in dir, and
// returns once it listens there.
func receive(t *testing.T, ctx context.Context, dir string, dst *Controller) (string, <-chan error) {
	t.Helper()
	mon := events.NewMonitor()
	sub := mon.Subscribe(64)
	dst.SetEvents(mon)
	sock := filepath.Join(dir, "mig.sock")
	recv := make(chan error, 1)
	go func() { recv <- dst.ReceiveMigration(ctx, ReceiveMigration{ReceiverURL: "unix:" + sock}) }()
	for {
		select {
		case e := <-sub.Events():
			if e.Event == "receiving-migration" {
				return sock, recv
			}
		case err := <-recv:
			t.Fatalf("the destination stopped before it listened: %v", err)
		case <-ctx.Done():
			t.Fatal("the destination never listened")
		}
	}
}

func wantControllerState(t *testing.T, c *Controller, want State, who string) {
	t.Helper()
	info, err := c.Info()
	if want == NoVM {
		if !errors.Is(err, ErrNotCreated) {
			t.Fatalf("%s: %v, want no VM", who, err)
		}
		return
	}
	if err != nil || info.State != want {
		t.Fatalf("%s is %q (%v), want %q", who, info.State, err, want)
	}
}

// A VM migrates, by pre-copy and locally, on a writable raw and a
// writable qcow2 disk. Before the switchover the source holds both
// images (another writer is refused); the destination builds its VM
// without opening them for writing (the source still holds them while
// the destination is built); by the time the destination takes them the
// source has let them go; afterwards the destination holds them and reads
// what the source wrote, both before the migration and after the
// destination was built (while the source waits for its answer): the
// qcow2 image's clusters allocated then need L2 tables the image did not
// have when the destination was built.
func TestMigrationHandsDisksOver(t *testing.T) {
	for _, local := range []bool{false, true} {
		name := "precopy"
		if local {
			name = "local"
		}
		t.Run(name, func(t *testing.T) {
			r := newDiskRig(t, local)
			src := r.source(t)
			r.wantLocked(t, "the running source")
			sv := vmOf(t, src)
			before := bytes.Repeat([]byte("before the migration "), 2000)
			grown := bytes.Repeat([]byte("after the destination's build "), 2000)
			write(t, disk(t, sv, "raw"), before, 1<<20)
			write(t, disk(t, sv, "qc"), before, 5<<20)
			// The guest's fsync: this much is on the storage when the
			// destination is built, the rest only once the source
			// releases the images.
			for _, id := range []string{"raw", "qc"} {
				if err := disk(t, sv, id).Flush(); err != nil {
					t.Fatal(err)
				}
			}

			var builtChecked, took bool
			// The hooks run on the destination's goroutine: they
			// report with t.Error and fail the migration.
			dst := destination(t, func(dv *VM) {
				// The destination is built: it holds no image, and
				// the source still writes them.
				if why := r.locked("the source, while the destination is built,"); why != "" {
					t.Error(why)
				}
				for _, d := range dv.handoffs() {
					if d.h.Active() {
						t.Errorf("the destination opened disk %s at build time", d.id)
					}
				}
				for id, off := range map[string]int64{"raw": 6 << 20, "qc": 40 << 20} {
					if _, err := sv.diskByID(id).WriteAt(grown, off); err != nil {
						t.Errorf("writing disk %s at the source after the destination's build: %v", id, err)
					}
				}
				builtChecked = true
			}, func(m IncomingMachine) error {
				if why := r.free("when the destination takes it (the source should have released it)"); why != "" {
					t.Error(why)
					return errors.New(why)
				}
				took = true
				return m.TakeResources()
			})
			sendErr, recvErr := migrate(t, r.dir, src, dst, local, nil)
			if sendErr != nil || recvErr != nil {
				t.Fatalf("send: %v; receive: %v", sendErr, recvErr)
			}
			if !builtChecked || !took {
				t.Fatalf("the destination's hooks did not run (built %v, took %v)", builtChecked, took)
			}
			wantControllerState(t, src, StateShutdown, "the source")
			wantControllerState(t, dst, StateRunning, "the destination")
			dv := vmOf(t, dst)
			wantData(t, disk(t, dv, "raw"), before, 1<<20, "raw, written before the migration")
			wantData(t, disk(t, dv, "qc"), before, 5<<20, "qcow2, written before the migration")
			wantData(t, disk(t, dv, "raw"), grown, 6<<20, "raw, written after the destination was built")
			wantData(t, disk(t, dv, "qc"), grown, 40<<20, "qcow2, clusters allocated after the destination was built")
			r.wantLocked(t, "the destination")
			write(t, disk(t, dv, "qc"), []byte("written at the destination"), 50<<20)
			if err := dst.Shutdown(); err != nil {
				t.Fatal(err)
			}
			res, _, err := image.Check(r.qcow, image.ToolOptions{Format: image.Qcow2})
			if err != nil || res.Corruptions != 0 || res.Leaks != 0 {
				t.Fatalf("the qcow2 image after the migration: %+v, %v", res, err)
			}
		})
	}
}

// growingSource is a migration's source whose guest writes new clusters
// of its qcow2 disk while pre-copy runs: grow runs once, in the first
// collection of dirty pages, with the guest running and its RAM half
// sent.
type growingSource struct {
	*migrationSource
	grow func()
	once sync.Once
}

func (g *growingSource) Dirty(i int) ([]uint64, error) {
	g.once.Do(g.grow)
	return g.migrationSource.Dirty(i)
}

// A qcow2 disk that the source grew during pre-copy (clusters allocated,
// with L2 tables and refcounts the image on the storage did not have when
// the destination was built and probed it) reads back whole at the
// destination, and the image checks clean afterwards.
func TestMigrationQcow2GrownDuringPrecopy(t *testing.T) {
	r := newDiskRig(t, false)
	src := r.source(t)
	sv := vmOf(t, src)
	dst := destination(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sock, recv := receive(t, ctx, r.dir, dst)
	ms, err := sv.migrationSource(ctx, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ms.release()
	offsets := []int64{12 << 20, 33 << 20, 60 << 20}
	chunk := func(off int64) []byte { return bytes.Repeat([]byte{byte(off >> 20)}, 3<<20/2) }
	grew := false
	g := &growingSource{migrationSource: ms, grow: func() {
		for _, off := range offsets {
			if _, err := sv.diskByID("qc").WriteAt(chunk(off), off); err != nil {
				t.Errorf("the guest's write at %#x during pre-copy: %v", off, err)
			}
		}
		grew = true
	}}
	conn, err := migration.Dial(ctx, migration.Endpoint{Network: "unix", Address: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := migration.Send(ctx, conn, g, migration.Options{}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if err := <-recv; err != nil {
		t.Fatalf("ReceiveMigration: %v", err)
	}
	if !grew {
		t.Fatal("pre-copy never collected dirty pages: the disk did not grow during it")
	}
	dq := disk(t, vmOf(t, dst), "qc")
	for _, off := range offsets {
		wantData(t, dq, chunk(off), off, "qcow2 clusters allocated during pre-copy")
	}
	if err := dst.Shutdown(); err != nil {
		t.Fatal(err)
	}
	res, _, err := image.Check(r.qcow, image.ToolOptions{Format: image.Qcow2})
	if err != nil || res.Corruptions != 0 || res.Leaks != 0 || res.AllocatedClusters < int64(len(offsets))*(3<<20/2)/4096 {
		t.Fatalf("the qcow2 image after the migration: %+v, %v", res, err)
	}
}

// A migration that fails after the source released its disks (the
// destination cannot open them: another process took one in between)
// leaves the source running on its disks, locked again, with its data;
// the destination has no VM.
func TestMigrationFailsAfterRelease(t *testing.T) {
	r := newDiskRig(t, false)
	src := r.source(t)
	sv := vmOf(t, src)
	data := bytes.Repeat([]byte("kept at the source "), 1000)
	write(t, disk(t, sv, "qc"), data, 7<<20)
	dst := destination(t, nil, func(m IncomingMachine) error {
		other, err := r.openOther("qc")
		if err != nil {
			t.Errorf("the source did not release the qcow2 disk: %v", err)
			return err
		}
		defer other.Close()
		return m.TakeResources()
	})
	sendErr, recvErr := migrate(t, r.dir, src, dst, false, nil)
	if recvErr == nil || !strings.Contains(recvErr.Error(), "cannot open the VM's disks") || !errors.Is(recvErr, raw.ErrLocked) {
		t.Fatalf("the destination: %v", recvErr)
	}
	if sendErr == nil || !errors.Is(sendErr, migration.ErrDestination) || !strings.Contains(sendErr.Error(), "disk qc") {
		t.Fatalf("the source: %v", sendErr)
	}
	wantControllerState(t, dst, NoVM, "the destination")
	wantControllerState(t, src, StateRunning, "the source")
	r.wantLocked(t, "the source, running again,")
	wantData(t, disk(t, sv, "qc"), data, 7<<20, "the source's qcow2 after the failed migration")
	write(t, disk(t, sv, "raw"), data, 0)
	wantData(t, disk(t, sv, "raw"), data, 0, "the source's raw disk after the failed migration")
}

// A source that cannot take its disks back when the migration fails
// (another process still holds one) stays paused, says so, and a later
// vm.resume takes them first: it fails while the other holds on, and
// succeeds once it lets go.
func TestMigrationSourceCannotTakeResourcesBack(t *testing.T) {
	r := newDiskRig(t, false)
	src := r.source(t)
	sv := vmOf(t, src)
	var other block.Backend
	dst := destination(t, nil, func(m IncomingMachine) error {
		var err error
		if other, err = r.openOther("raw"); err != nil {
			t.Errorf("the source did not release the raw disk: %v", err)
			return err
		}
		return m.TakeResources()
	})
	sendErr, _ := migrate(t, r.dir, src, dst, false, nil)
	if other == nil {
		t.Fatal("the destination's hook did not run")
	}
	if sendErr == nil || !strings.Contains(sendErr.Error(), "the VM stays paused here because its disks could not be opened again") || !strings.Contains(sendErr.Error(), "disk raw") {
		t.Fatalf("the source: %v", sendErr)
	}
	wantControllerState(t, src, StatePaused, "the source")
	if err := src.Resume(); err == nil || !strings.Contains(err.Error(), "could not be opened again") {
		t.Fatalf("vm.resume while another holds a disk: %v", err)
	}
	wantControllerState(t, src, StatePaused, "the source")
	other.Close()
	if err := src.Resume(); err != nil {
		t.Fatalf("vm.resume once the disk is free: %v", err)
	}
	wantControllerState(t, src, StateRunning, "the source")
	r.wantLocked(t, "the resumed source")
	write(t, disk(t, sv, "raw"), []byte("after the resume"), 0)
	wantData(t, disk(t, sv, "raw"), []byte("after the resume"), 0, "the resumed source")
}

// A migration whose outcome the source cannot know (the connection breaks
// after everything was sent) leaves the source paused with its disks
// released, since the destination may run the guest on them, as here it
// does. vm.resume at the source then fails on the destination's locks;
// once the destination is gone, it takes the disks back and runs.
func TestMigrationOutcomeUnknownKeepsDisksReleased(t *testing.T) {
	r := newDiskRig(t, false)
	src := r.source(t)
	sv := vmOf(t, src)
	var p *proxy
	dst := destination(t, nil, func(m IncomingMachine) error {
		p.cut() // the source hears nothing from here on
		return m.TakeResources()
	})
	sendErr, recvErr := migrate(t, r.dir, src, dst, false, func(to string) string {
		p = newProxy(t, filepath.Join(r.dir, "proxy.sock"), to)
		return p.addr
	})
	if !errors.Is(sendErr, migration.ErrOutcomeUnknown) {
		t.Fatalf("the source: %v, want the outcome unknown", sendErr)
	}
	if recvErr != nil {
		t.Fatalf("the destination: %v", recvErr)
	}
	wantControllerState(t, src, StatePaused, "the source")
	wantControllerState(t, dst, StateRunning, "the destination")
	r.wantLocked(t, "the destination")
	if err := src.Resume(); err == nil || !strings.Contains(err.Error(), "check that it does not run at the migration's destination") {
		t.Fatalf("vm.resume at the source while the destination runs: %v", err)
	}
	wantControllerState(t, src, StatePaused, "the source")
	if err := dst.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := src.Resume(); err != nil {
		t.Fatalf("vm.resume at the source once the destination is gone: %v", err)
	}
	wantControllerState(t, src, StateRunning, "the source")
	r.wantLocked(t, "the resumed source")
	write(t, disk(t, sv, "qc"), []byte("after the resume"), 0)
	wantData(t, disk(t, sv, "qc"), []byte("after the resume"), 0, "the resumed source")
}

// proxy forwards one connection from addr to a UNIX socket, until cut.
type proxy struct {
	addr string
	mu   sync.Mutex
	cs   []net.Conn
}

func newProxy(t *testing.T, addr, to string) *proxy {
	t.Helper()
	l, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: addr}
	t.Cleanup(func() { l.Close(); p.cut() })
	go func() {
		in, err := l.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("unix", to)
		if err != nil {
			in.Close()
			return
		}
		p.mu.Lock()
		p.cs = append(p.cs, in, out)
		p.mu.Unlock()
		go func() { io.Copy(out, in); out.Close() }()
		io.Copy(in, out)
		in.Close()
	}()
	return p
}

// cut closes both sides.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.cs {
		c.Close()
	}
}

// A restore from a snapshot opens the disks at once, locked, as before
// migrations handed them over: only a migration's destination waits.
func TestRestoreOpensDisks(t *testing.T) {
	r := newDiskRig(t, false)
	src := r.source(t)
	data := bytes.Repeat([]byte("in the snapshot's disk "), 1000)
	write(t, disk(t, vmOf(t, src), "qc"), data, 9<<20)
	if err := src.Pause(); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(r.dir, "snap")
	if err := src.Snapshot("file://" + snap); err != nil {
		t.Fatal(err)
	}
	if err := src.Shutdown(); err != nil {
		t.Fatal(err)
	}
	c := NewController(Builder(IO{}, testOpts), nil)
	c.SetRestore(Restorer(IO{}, testOpts))
	t.Cleanup(func() { c.Shutdown(); c.Delete() })
	if err := c.Restore("file://"+snap, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	r.wantLocked(t, "the restored VM")
	v := vmOf(t, c)
	for _, d := range v.handoffs() {
		if !d.h.Active() {
			t.Errorf("the restored VM's disk %s has no image", d.id)
		}
	}
	wantData(t, disk(t, v, "qc"), data, 9<<20, "the restored VM's qcow2 disk")
	if err := c.Resume(); err != nil {
		t.Fatal(err)
	}
	wantControllerState(t, c, StateRunning, "the restored VM")
}

// A disk graph (a mirror of a raw and a qcow2 image, with its log) hands
// over the same way: the destination probes the graph without locks at
// build time and opens it, through its own graph builder, when it takes
// the disks; its named node is then the live one.
func TestMigrationHandsGraphOver(t *testing.T) {
	r := newDiskRig(t, false)
	root, err := graph.Parse([]byte(`{"node":"mirror","name":"m0","options":{"log":"` + filepath.Join(r.dir, "m0.log") +
		`","assume_clean":true},"children":[{"node":"raw","path":"` + r.raw + `"},{"node":"qcow2","path":"` + r.qcow + `"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	// The mirror's children must be of one size.
	if err := image.Create(r.qcow, image.CreateOptions{Format: image.Qcow2, Size: rigRawSize}); err != nil {
		t.Fatal(err)
	}
	r.cfg.Disks = []config.Disk{{ID: "g", Graph: root}}
	src := r.source(t)
	r.wantLocked(t, "the running source")
	data := bytes.Repeat([]byte("mirrored "), 4000)
	sv := vmOf(t, src)
	write(t, disk(t, sv, "g"), data, 3<<20)

	// A first attempt fails at the destination: the source opens the
	// graph again through its builder, whose registry then names the new
	// mirror node.
	old := sv.graphs.Node("m0")
	failing := destination(t, nil, func(IncomingMachine) error { return errors.New("refused by the test") })
	if sendErr, _ := migrate(t, r.dir, src, failing, false, nil); sendErr == nil {
		t.Fatal("the refused migration succeeded")
	}
	wantControllerState(t, src, StateRunning, "the source after the failed attempt")
	r.wantLocked(t, "the source after the failed attempt")
	if n := sv.graphs.Node("m0"); n == nil || n == old {
		t.Fatalf("the source's mirror node after it took the graph back: %v (before: %v)", n, old)
	}
	write(t, disk(t, sv, "g"), data, 5<<20)

	dst := destination(t, func(dv *VM) {
		if dv.graphs.Node("m0") != nil {
			t.Error("the destination registered the probe's mirror node")
		}
	}, nil)
	if sendErr, recvErr := migrate(t, r.dir, src, dst, false, nil); sendErr != nil || recvErr != nil {
		t.Fatalf("send: %v; receive: %v", sendErr, recvErr)
	}
	dv := vmOf(t, dst)
	wantData(t, disk(t, dv, "g"), data, 3<<20, "the mirrored disk at the destination")
	wantData(t, disk(t, dv, "g"), data, 5<<20, "the mirrored disk at the destination, written after the source took it back")
	r.wantLocked(t, "the destination")
	if dv.graphs.Node("m0") == nil {
		t.Fatal("the destination's mirror node is not registered")
	}
	if err := dst.Shutdown(); err != nil {
		t.Fatal(err)
	}
	// Both children got the data: the mirror ran whole on both sides.
	for _, id := range []string{"raw", "qc"} {
		b, err := r.openOther(id)
		if err != nil {
			t.Fatal(err)
		}
		wantData(t, b, data, 3<<20, "mirror child "+id)
		wantData(t, b, data, 5<<20, "mirror child "+id)
		b.Close()
	}
}

// A disk whose flush fails when the source releases it (a faults node
// over the raw image fails the first flush) is not released: the
// migration fails before anything reaches the destination's disks, and
// the source runs on, holding its images.
func TestMigrationReleaseFlushFails(t *testing.T) {
	r := newDiskRig(t, false)
	root, err := graph.Parse([]byte(`{"node":"faults","options":{"rules":[{"ops":"flush","times":1}]},"children":[{"node":"raw","path":"` + r.raw + `"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	r.cfg.Disks[0] = config.Disk{ID: "raw", Graph: root}
	src := r.source(t)
	sv := vmOf(t, src)
	write(t, disk(t, sv, "raw"), []byte("not yet flushed"), 0)
	took := false
	dst := destination(t, nil, func(m IncomingMachine) error {
		took = true
		return m.TakeResources()
	})
	sendErr, recvErr := migrate(t, r.dir, src, dst, false, nil)
	if sendErr == nil || !strings.Contains(sendErr.Error(), "cannot release disk raw for the destination: flushing the image before releasing it") {
		t.Fatalf("the source: %v", sendErr)
	}
	if recvErr == nil || took {
		t.Fatalf("the destination: %v, took the disks: %v", recvErr, took)
	}
	wantControllerState(t, src, StateRunning, "the source")
	wantControllerState(t, dst, NoVM, "the destination")
	r.wantLocked(t, "the source after the failed release")
	if !sv.diskByID("raw").(*handoff.Disk).Active() {
		t.Fatal("the source let its disk go")
	}
	if err := disk(t, sv, "raw").Flush(); err != nil {
		t.Fatalf("a flush after the failed one: %v", err)
	}
	wantData(t, disk(t, sv, "raw"), []byte("not yet flushed"), 0, "the source's disk")
}
