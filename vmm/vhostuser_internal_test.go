package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/loader/loadertest"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/migration"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// These tests snapshot, restore and migrate real VMs (KVM, the synthetic
// kernel that halts, as in migrate_disk_internal_test.go) with a
// vhost-user-blk disk that vio's own back-end serves in this process, one
// front-end at a time (as vio serve-disk and qemu-storage-daemon do):
// the second VM can only talk to it once the first has let it go. The
// test plays the guest's virtio-blk driver through the VM's configuration
// ports, MMIO bus and RAM, keeping all of its state in the rings in guest
// RAM, so that it goes on in a restored or migrated VM's RAM.

const vuWait = 30 * time.Second // bounds a hang; never a synchronization

// notifyDisk is a disk that signals done after each request it served.
type notifyDisk struct {
	block.Backend
	done chan struct{}
}

func (d *notifyDisk) signal() {
	select {
	case d.done <- struct{}{}:
	default:
	}
}

func (d *notifyDisk) ReadAt(p []byte, off int64) (int, error) {
	defer d.signal()
	return d.Backend.ReadAt(p, off)
}

func (d *notifyDisk) WriteAt(p []byte, off int64) (int, error) {
	defer d.signal()
	return d.Backend.WriteAt(p, off)
}

// vuRig is a VM config with a vhost-user disk "vu" and its back-end.
type vuRig struct {
	dir, sock string
	cfg       *config.VM
	disk      *notifyDisk
}

func newVURig(t *testing.T) *vuRig {
	t.Helper()
	dir := t.TempDir()
	r := &vuRig{dir: dir, sock: filepath.Join(dir, "vu.sock"),
		disk: &notifyDisk{Backend: blocktest.NewMem(8 << 20), done: make(chan struct{}, 1)}}
	opts := loadertest.Default()
	opts.Entry64 = idleEntry
	kernel := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(kernel, loadertest.BzImage(opts), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Payload.Kernel = kernel
	cfg.Memory.Size, cfg.Memory.Shared = config.MinMemory, true
	cfg.Serial.Mode = config.ModeOff
	cfg.Disks = []config.Disk{{ID: "vu", VhostUser: true, VhostSocket: r.sock}}
	r.cfg = cfg
	r.serve(t, r.sock, r.disk)
	return r
}

// serve serves disk as vhost-user-blk (two queues) on sock until the test
// ends.
func (r *vuRig) serve(t *testing.T, sock string, disk block.Backend) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	b := &vhostuser.Backend{NewDevice: func() (virtio.QueueServer, error) {
		return blk.New(disk, blk.Config{NumQueues: 2})
	}}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- b.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("the back-end: %v", err)
		}
	})
}

func (r *vuRig) source(t *testing.T) *Controller {
	t.Helper()
	return (&diskRig{cfg: r.cfg}).source(t)
}

// The guest's ring and buffers (guest RAM is 32 MiB, the kernel low).
const (
	vuRingBase = 24 << 20
	vuRingSize = 16
	vuBuf      = 25 << 20 // header, then 4 KiB of data, then the status byte
	vuSectors  = 8
)

// vuGuest plays virtio-blk's driver over queue 0 of the VM's disk "vu".
type vuGuest struct {
	g    *virtiopcitest.Guest
	mem  *memory.Memory
	q    virtio.QueueConfig
	disk *notifyDisk
}

// vuSlot returns the PCI slot of the VM's disk "vu".
func vuSlot(t *testing.T, v *VM) uint8 {
	t.Helper()
	v.hp.mu.Lock()
	defer v.hp.mu.Unlock()
	for _, d := range v.pciDevices {
		if d.hp != nil && d.hp.id == "vu" {
			return d.hp.slot
		}
	}
	t.Fatal("the VM has no disk vu")
	return 0
}

// driveVU brings the disk up as a driver would (VERSION_1 only, no MSI-X:
// the interrupts go to a masked INTx pin, the test polls the used ring).
func driveVU(t *testing.T, v *VM, disk *notifyDisk) *vuGuest {
	t.Helper()
	g, err := virtiopcitest.Probe(v.mmio, v.pio, v.mem, pci.BDF{Device: vuSlot(t, v)})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Negotiate(virtio.FeatureVersion1); err != nil {
		t.Fatal(err)
	}
	d, err := g.SetupQueue(virtiopcitest.QueueConfig{Index: 0, Vector: virtiopci.NoVector, Size: vuRingSize, Base: vuRingBase, DataSize: 0x1000})
	if err != nil {
		t.Fatal(err)
	}
	g.SetStatus(virtio.StatusDriverOK)
	if s := g.Status(); s&virtio.StatusDriverOK == 0 || s&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatalf("the disk's status is %#x", s)
	}
	return &vuGuest{g: g, mem: v.mem, q: d.Config(), disk: disk}
}

// moveTo carries the driver over to another VM running the same guest (a
// restored or migrated one): its configuration ports, MMIO bus and RAM.
func (u *vuGuest) moveTo(t *testing.T, v *VM) {
	t.Helper()
	g, err := virtiopcitest.Probe(v.mmio, v.pio, v.mem, pci.BDF{Device: vuSlot(t, v)})
	if err != nil {
		t.Fatal(err)
	}
	u.g, u.mem = g, v.mem
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// submit makes one request available (descriptors 0-2: header, data,
// status) and kicks, unless kick is false; it returns the avail index
// the request's completion reaches.
func (u *vuGuest) submit(t *testing.T, typ uint32, sector uint64, data []byte, kick bool) uint16 {
	t.Helper()
	hdr := make([]byte, blk.HeaderSize)
	binary.LittleEndian.PutUint32(hdr[0:], typ)
	binary.LittleEndian.PutUint64(hdr[8:], sector)
	_, err := u.mem.WriteAt(hdr, vuBuf)
	must(t, err)
	dataFlags := uint16(0)
	if typ == blk.TypeIn {
		dataFlags = 2 // VRING_DESC_F_WRITE
	} else {
		_, err = u.mem.WriteAt(data, vuBuf+4096)
		must(t, err)
	}
	_, err = u.mem.WriteAt([]byte{0xff}, vuBuf+8192)
	must(t, err)
	desc := func(i int, addr uint64, n uint32, flags, next uint16) {
		b := make([]byte, 16)
		binary.LittleEndian.PutUint64(b, addr)
		binary.LittleEndian.PutUint32(b[8:], n)
		binary.LittleEndian.PutUint16(b[12:], flags)
		binary.LittleEndian.PutUint16(b[14:], next)
		_, err := u.mem.WriteAt(b, int64(u.q.DescTable)+16*int64(i))
		must(t, err)
	}
	desc(0, vuBuf, blk.HeaderSize, 1, 1)
	desc(1, vuBuf+4096, vuSectors*512, 1|dataFlags, 2)
	desc(2, vuBuf+8192, 1, 2, 0)
	idx, err := u.mem.LoadUint16(u.q.AvailRing + 2)
	must(t, err)
	must(t, u.mem.StoreUint16(u.q.AvailRing+4+2*uint64(idx%vuRingSize), 0))
	must(t, u.mem.StoreUint16(u.q.AvailRing+2, idx+1))
	if kick {
		u.g.Kick(0)
	}
	return idx + 1
}

// complete waits until the used index reaches idx: the disk's signal
// says the back-end served a request (one signal may stand for several),
// and the used entry follows within the back-end's push, which a bounded
// spin on runtime.Gosched waits for (no sleep).
func (u *vuGuest) complete(t *testing.T, idx uint16) {
	t.Helper()
	deadline := time.Now().Add(vuWait)
	select {
	case <-u.disk.done:
	case <-time.After(vuWait):
		t.Fatalf("the back-end served no request within %v", vuWait)
	}
	for {
		used, err := u.mem.LoadUint16(u.q.UsedRing + 2)
		must(t, err)
		if used == idx {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("used index %d, want %d, after %v", used, idx, vuWait)
		}
		runtime.Gosched()
	}
	st := make([]byte, 1)
	_, err := u.mem.ReadAt(st, vuBuf+8192)
	must(t, err)
	if st[0] != blk.StatusOK {
		t.Fatalf("request status %d", st[0])
	}
}

func (u *vuGuest) write(t *testing.T, sector uint64, data []byte) {
	t.Helper()
	u.complete(t, u.submit(t, blk.TypeOut, sector, data, true))
}

func (u *vuGuest) read(t *testing.T, sector uint64) []byte {
	t.Helper()
	u.complete(t, u.submit(t, blk.TypeIn, sector, nil, true))
	b := make([]byte, vuSectors*512)
	_, err := u.mem.ReadAt(b, vuBuf+4096)
	must(t, err)
	return b
}

func vuPattern(s string) []byte {
	return bytes.Repeat([]byte(s), vuSectors*512/len(s)+1)[:vuSectors*512]
}

func (u *vuGuest) wantRead(t *testing.T, sector uint64, want []byte, what string) {
	t.Helper()
	if got := u.read(t, sector); !bytes.Equal(got, want) {
		t.Fatalf("%s: sector %d reads %q..., want %q...", what, sector, got[:16], want[:16])
	}
}

// A VM with a vhost-user disk snapshots (its rings stopped in the
// back-end, their bases in a section of their own) and runs on; restored
// in another Controller once the first VM is gone, it takes the back-end,
// its RAM is shared again (a memfd the back-end maps), and the guest's
// disk carries on: data written before and after reads back.
func TestVhostUserSnapshotRestore(t *testing.T) {
	r := newVURig(t)
	src := r.source(t)
	u := driveVU(t, vmOf(t, src), r.disk)
	before := vuPattern("before the snapshot ")
	u.write(t, 8, before)
	u.wantRead(t, 8, before, "the source")

	must(t, src.Pause())
	snapDir := filepath.Join(r.dir, "snap")
	must(t, src.Snapshot("file://"+snapDir))
	must(t, src.Resume())
	after := vuPattern("after the snapshot, at the source ")
	u.write(t, 16, after)
	f, err := os.Open(filepath.Join(snapDir, SnapshotState))
	must(t, err)
	snap, err := state.Decode(f)
	f.Close()
	must(t, err)
	var found bool
	for _, s := range snap.Sections() {
		found = found || s.ID == "disk0/vhost-user-blk" && bytes.Contains(s.Data, []byte(`"Running":true,"Base":2`))
	}
	if !found {
		t.Fatalf("no vhost-user-blk section with queue 0 stopped at 2 (a write and a read) in %v", snap.Sections())
	}
	must(t, src.Shutdown())

	dst := NewController(Builder(IO{}, testOpts), nil)
	dst.SetRestore(Restorer(IO{}, testOpts))
	t.Cleanup(func() { dst.Shutdown(); dst.Delete() })
	must(t, dst.Restore("file://"+snapDir, RestoreOptions{}))
	must(t, dst.Resume())
	dv := vmOf(t, dst)
	if _, _, ok := dv.mem.Regions()[0].File(); !ok {
		t.Fatal("the restored VM's RAM is not shared")
	}
	u.moveTo(t, dv)
	u.wantRead(t, 8, before, "the restored VM")
	u.wantRead(t, 16, after, "the restored VM")
	again := vuPattern("written by the restored VM ")
	u.write(t, 24, again)
	u.wantRead(t, 24, again, "the restored VM")
}

// duringPrecopy is a migration's source whose guest reads from its
// vhost-user disk while pre-copy runs (once, in the first collection of
// dirty pages, after RAM was sent whole): only the back-end's dirty log
// can tell the source that the read's buffer changed.
type duringPrecopy struct {
	*migrationSource
	read func()
	once bool
}

func (d *duringPrecopy) Dirty(i int) ([]uint64, error) {
	if !d.once {
		d.once = true
		d.read()
	}
	return d.migrationSource.Dirty(i)
}

// A VM with a vhost-user disk migrates between two Controllers, by
// pre-copy and locally: the destination, built without a connection,
// takes the back-end once the source let it go, and the guest's disk
// carries on there; by pre-copy, a buffer the back-end filled while RAM
// was being copied arrives filled (the back-end's dirty log).
func TestVhostUserMigration(t *testing.T) {
	for _, local := range []bool{false, true} {
		name := "precopy"
		if local {
			name = "local"
		}
		t.Run(name, func(t *testing.T) {
			r := newVURig(t)
			src := r.source(t)
			sv := vmOf(t, src)
			u := driveVU(t, sv, r.disk)
			before := vuPattern("before the migration ")
			during := vuPattern("read while pre-copy runs ")
			u.write(t, 8, before)
			u.write(t, 40, during)
			u.wantRead(t, 8, before, "the source")
			dst := destination(t, nil, nil)
			if local {
				sendErr, recvErr := migrate(t, r.dir, src, dst, true, nil)
				if sendErr != nil || recvErr != nil {
					t.Fatalf("send: %v; receive: %v", sendErr, recvErr)
				}
				wantControllerState(t, src, StateShutdown, "the source")
			} else {
				// Send through a source that reads sector 40 into the
				// guest's buffer during pre-copy.
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				sock, recv := receive(t, ctx, r.dir, dst)
				ms, err := sv.migrationSource(ctx, false, false)
				must(t, err)
				defer ms.release()
				read := false
				ds := &duringPrecopy{migrationSource: ms, read: func() {
					u.complete(t, u.submit(t, blk.TypeIn, 40, nil, true))
					read = true
				}}
				conn, err := migration.Dial(ctx, migration.Endpoint{Network: "unix", Address: sock})
				must(t, err)
				defer conn.Close()
				if _, err := migration.Send(ctx, conn, ds, migration.Options{}); err != nil {
					t.Fatalf("Send: %v", err)
				}
				if err := <-recv; err != nil {
					t.Fatalf("ReceiveMigration: %v", err)
				}
				if !read {
					t.Fatal("pre-copy never collected dirty pages")
				}
			}
			wantControllerState(t, dst, StateRunning, "the destination")
			dv := vmOf(t, dst)
			if !local {
				buf := make([]byte, len(during))
				_, err := dv.mem.ReadAt(buf, vuBuf+4096)
				must(t, err)
				if !bytes.Equal(buf, during) {
					t.Fatalf("the buffer the back-end filled during pre-copy holds %q... at the destination, want %q...", buf[:16], during[:16])
				}
			}
			u.moveTo(t, dv)
			u.wantRead(t, 8, before, "the destination")
			after := vuPattern("written at the destination ")
			u.write(t, 16, after)
			u.wantRead(t, 16, after, "the destination")
			got := make([]byte, len(after))
			_, err := r.disk.ReadAt(got, 16*512)
			must(t, err)
			if !bytes.Equal(got, after) {
				t.Fatal("the back-end's disk does not hold the destination's write")
			}
		})
	}
}

// A migration whose destination cannot take the back-end (none listens
// at its socket path) fails; the source takes its back-end back and the
// guest's disk goes on there.
func TestVhostUserMigrationFailsAtTake(t *testing.T) {
	r := newVURig(t)
	src := r.source(t)
	sv := vmOf(t, src)
	u := driveVU(t, sv, r.disk)
	before := vuPattern("before the failed migration ")
	u.write(t, 8, before)
	// The destination looks for its back-end elsewhere, and finds none.
	dst := NewController(Builder(IO{}, testOpts), nil)
	real := Receiver(IO{}, testOpts)
	dst.SetReceive(func(cfg *config.VM, ram *migration.SharedRAM) (IncomingMachine, error) {
		cfg.Disks[0].VhostSocket = filepath.Join(r.dir, "nobody.sock")
		return real(cfg, ram)
	})
	t.Cleanup(func() { dst.Shutdown(); dst.Delete() })
	sendErr, recvErr := migrate(t, r.dir, src, dst, true, nil)
	if sendErr == nil || recvErr == nil || !strings.Contains(sendErr.Error(), "vhost-user") {
		t.Fatalf("send: %v; receive: %v; want both to fail on the vhost-user back-end", sendErr, recvErr)
	}
	wantControllerState(t, src, StateRunning, "the source")
	wantControllerState(t, dst, NoVM, "the destination")
	u.wantRead(t, 8, before, "the source after the failed migration")
	after := vuPattern("after the failed migration ")
	u.write(t, 16, after)
	u.wantRead(t, 16, after, "the source after the failed migration")
}

// maskingProxy stands between a front-end and a back-end and takes
// VHOST_F_LOG_ALL and LOG_SHMFD out of the back-end's offers: a back-end
// that cannot log.
func maskingProxy(t *testing.T, sock, target string) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			fc, err := l.AcceptUnix()
			if err != nil {
				return
			}
			bc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: target, Net: "unix"})
			if err != nil {
				fc.Close()
				return
			}
			go relay(vhostuser.NewConn(fc), vhostuser.NewConn(bc), fc, bc)
		}
	}()
}

func relay(front, back *vhostuser.Conn, fc, bc *net.UnixConn) {
	defer fc.Close()
	defer bc.Close()
	for {
		m, err := front.ReadMessage()
		if err != nil {
			return
		}
		err = back.WriteMessage(m.Header, m.Payload, m.FDs)
		m.Close()
		if err != nil {
			return
		}
		switch m.Request {
		case vhostuser.GetFeatures, vhostuser.GetProtocolFeatures, vhostuser.GetQueueNum, vhostuser.GetVringBase,
			vhostuser.GetConfig, vhostuser.GetInflightFD, vhostuser.GetMaxMemSlots:
		default:
			if !m.NeedReply() {
				continue
			}
		}
		r, err := back.ReadMessage()
		if err != nil {
			return
		}
		switch r.Request {
		case vhostuser.GetFeatures:
			v, _ := vhostuser.ParseU64(r.Payload)
			r.Payload = vhostuser.U64(v &^ vhostuser.FLogAll)
		case vhostuser.GetProtocolFeatures:
			v, _ := vhostuser.ParseU64(r.Payload)
			r.Payload = vhostuser.U64(v &^ vhostuser.ProtocolLogShmfd)
		}
		err = front.WriteMessage(r.Header, r.Payload, r.FDs)
		r.Close()
		if err != nil {
			return
		}
	}
}

// A VM whose vhost-user back-end cannot log what it writes refuses to
// migrate by pre-copy, in one sentence naming the device and what the
// back-end lacks, and runs on; it still snapshots and migrates locally.
func TestVhostUserPrecopyNeedsLog(t *testing.T) {
	r := newVURig(t)
	proxied := filepath.Join(r.dir, "proxy.sock")
	maskingProxy(t, proxied, r.sock)
	r.cfg.Disks[0].VhostSocket = proxied
	src := r.source(t)
	u := driveVU(t, vmOf(t, src), r.disk)
	dst := destination(t, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := src.SendMigration(ctx, SendMigration{DestinationURL: "unix:" + filepath.Join(r.dir, "none.sock")})
	if !errors.Is(err, ErrNotSaveable) || strings.Contains(err.Error(), "\n") ||
		!strings.Contains(err.Error(), "vhost-user device disk0 (vhost-user-blk)") ||
		!strings.Contains(err.Error(), "neither VHOST_F_LOG_ALL nor the LOG_SHMFD protocol feature") {
		t.Fatalf("pre-copy of a VM whose back-end cannot log: %v", err)
	}
	wantControllerState(t, src, StateRunning, "the source")
	u.write(t, 8, vuPattern("still running "))
	sendErr, recvErr := migrate(t, r.dir, src, dst, true, nil)
	if sendErr != nil || recvErr != nil {
		t.Fatalf("local migration: send: %v; receive: %v", sendErr, recvErr)
	}
	u.moveTo(t, vmOf(t, dst))
	u.wantRead(t, 8, vuPattern("still running "), "the destination of a local migration")
}
