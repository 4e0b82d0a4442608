package vufront_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/devices/virtio/vufront"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// backendKind starts a back-end serving a 1 MiB disk with two queues on
// sock: vio's own (in this process) or qemu-storage-daemon.
type backendKind struct {
	name  string
	start func(t *testing.T, sock string)
}

var backendKinds = []backendKind{
	{"vio", func(t *testing.T, sock string) { startVio(t, sock, blocktest.NewMem(1<<20)) }},
	{"qsd", func(t *testing.T, sock string) { startQSD(t, rawImage(t, 1<<20), sock) }},
}

// save pauses m's device and saves its two sections, as a snapshot and a
// migration's stop-and-copy do, through the state container's encoding.
func save(t *testing.T, m *machine) *state.Snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := m.mc.Transport.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	snap := state.New()
	if err := snap.Save("disk0/pci", m.mc.Transport); err != nil {
		t.Fatal(err)
	}
	if err := snap.Save("disk0/"+m.dev.StateKind(), m.dev); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := snap.Encode(&b); err != nil {
		t.Fatal(err)
	}
	out, err := state.Decode(&b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// restore builds a Deferred device over mem, restores snap into it
// behind a fresh transport and takes the back-end, as a restored VM or a
// migration's destination does; the guest's queues carry on in the
// returned machine.
func restore(t *testing.T, mem *memory.Memory, sock string, snap *state.Snapshot, queues int, from *machine) *machine {
	t.Helper()
	return restoreCfg(t, vufront.Config{Socket: sock, Memory: mem, NumQueues: queues}, snap, from)
}

func restoreCfg(t *testing.T, cfg vufront.Config, snap *state.Snapshot, from *machine) *machine {
	t.Helper()
	mem := cfg.Memory
	cfg.Deferred, cfg.Log = true, testLog(t)
	dev, err := vufront.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	mc := virtiopcitest.NewMachineOn(t, dev, mem, 4096)
	if err := snap.Restore("disk0/pci", mc.Transport); err != nil {
		t.Fatal(err)
	}
	if err := snap.Restore("disk0/"+dev.StateKind(), dev); err != nil {
		t.Fatal(err)
	}
	mc.Root.Resync()
	if mc.Guest, err = virtiopcitest.Probe(mc.MMIO, mc.PIO, mem, pci.BDF{Device: 1}); err != nil {
		t.Fatal(err)
	}
	if err := dev.Take(); err != nil {
		t.Fatal(err)
	}
	return &machine{dev: dev, mc: mc, queues: from.queues}
}

// A vhost-user disk pauses (its rings stopped, nothing in flight), saves
// and resumes; and a device built later over the same guest RAM, given
// that state, takes the back-end once the first one let it go and
// carries on with the guest's rings: what was written before reads back,
// a request the guest made while the device was paused completes once,
// new writes land. Against vio's back-end and qemu-storage-daemon.
func TestSnapshotRestore(t *testing.T) {
	for _, k := range backendKinds {
		t.Run(k.name, func(t *testing.T) {
			mem := sharedRAM(t)
			sock := filepath.Join(t.TempDir(), "vu.sock")
			k.start(t, sock)
			m := newMachine(t, mem, vufront.Config{Socket: sock})
			m.start(t, true)
			m.write(t, 0, 1, pattern(1))
			m.write(t, 1, 2, pattern(2))

			// A snapshot of a paused VM: the device resumes afterwards.
			save(t, m)
			m.mc.Transport.Resume()
			m.write(t, 0, 3, pattern(3))
			if got := m.read(t, 1, 3); !bytes.Equal(got, pattern(3)) {
				t.Fatal("sector 3 differs after a pause and resume")
			}

			// Restored elsewhere: a request made while paused is served
			// by the restored device.
			snap := save(t, m)
			h := m.submit(t, 0, [][]byte{header(blk.TypeOut, 4), pattern(4)}, []uint32{1})
			if err := m.dev.Release(); err != nil {
				t.Fatal(err)
			}
			m2 := restore(t, mem, sock, snap, 2, m)
			if u := m2.next(t, 0); u.ID != h || u.Data[0] != 0 {
				t.Fatalf("the request made while paused: used %+v, want id %d status 0", u, h)
			}
			for q, sec := range []uint64{1, 2, 3, 4} {
				if got := m2.read(t, q%2, sec); !bytes.Equal(got, pattern(int(sec))) {
					t.Fatalf("sector %d differs after the restore", sec)
				}
			}
			m2.write(t, 1, 5, pattern(5))
			if got := m2.read(t, 0, 5); !bytes.Equal(got, pattern(5)) {
				t.Fatal("sector 5 differs")
			}
			for q := range m2.queues {
				if n := m2.queues[q].InFlight(); n != 0 {
					t.Fatalf("queue %d: %d requests never completed", q, n)
				}
			}
		})
	}
}

// A migration that fails after the source let the back-end go: the
// source takes it back and resumes, and the guest's I/O goes on.
func TestReleaseTakeBack(t *testing.T) {
	mem := sharedRAM(t)
	sock := filepath.Join(t.TempDir(), "vu.sock")
	startVio(t, sock, blocktest.NewMem(1<<20))
	m := newMachine(t, mem, vufront.Config{Socket: sock})
	m.start(t, false)
	m.write(t, 0, 1, pattern(1))
	save(t, m)
	if err := m.dev.Release(); err != nil {
		t.Fatal(err)
	}
	if err := m.dev.Take(); err != nil {
		t.Fatal(err)
	}
	m.mc.Transport.Resume()
	m.write(t, 1, 2, pattern(2))
	if got := m.read(t, 0, 1); !bytes.Equal(got, pattern(1)) {
		t.Fatal("sector 1 differs after the take-back")
	}
}

// Release refuses a device whose rings run; Take of a device that never
// had its state refuses; a state whose base disagrees with guest memory
// is refused.
func TestMigrationRefusals(t *testing.T) {
	mem := sharedRAM(t)
	sock := filepath.Join(t.TempDir(), "vu.sock")
	startVio(t, sock, blocktest.NewMem(1<<20))
	m := newMachine(t, mem, vufront.Config{Socket: sock})
	m.start(t, false)
	if err := m.dev.Release(); err == nil || !strings.Contains(err.Error(), "pause it first") {
		t.Fatalf("release of a running device: %v", err)
	}
	if _, err := m.dev.SaveState(); !errors.Is(err, state.ErrInFlight) {
		t.Fatalf("saving a running device: %v", err)
	}
	d, err := vufront.New(vufront.Config{Socket: sock, Memory: mem, Deferred: true, NumQueues: 2, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Take(); err == nil || !strings.Contains(err.Error(), "not restored") {
		t.Fatalf("take without a state: %v", err)
	}
	if _, err := vufront.New(vufront.Config{Socket: sock, Memory: mem, Deferred: true, Log: testLog(t)}); err == nil || !strings.Contains(err.Error(), "num_queues") {
		t.Fatalf("a deferred disk without its number of queues: %v", err)
	}
	m.write(t, 0, 1, pattern(1))
	snap := save(t, m)
	sec := snap.Sections()[1]
	var st vufront.State
	if err := json.Unmarshal(sec.Data, &st); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		change func(s *vufront.State)
	}{
		{"a base the used ring does not have", func(s *vufront.State) { s.Queues[0].Base++ }},
		{"a queue running here that the transport has stopped", func(s *vufront.State) { s.Queues[1].Running = false }},
		{"features vio does not present", func(s *vufront.State) { s.Features |= 1 << 40 }},
		{"a short configuration space", func(s *vufront.State) { s.Config = s.Config[:8] }},
		{"another device type", func(s *vufront.State) { s.Type = 1 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			bad := st
			bad.Queues = slices.Clone(st.Queues)
			c.change(&bad)
			dev, err := vufront.New(vufront.Config{Socket: sock, Memory: mem, Deferred: true, NumQueues: 2, Log: testLog(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			mc := virtiopcitest.NewMachineOn(t, dev, mem, 64)
			if err := snap.Restore("disk0/pci", mc.Transport); err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(bad)
			if err := dev.UnmarshalState(vufront.StateVersion, b); !errors.Is(err, state.ErrInvalid) && !errors.Is(err, state.ErrMismatch) {
				t.Fatalf("restored: %v", err)
			}
		})
	}
	m.mc.Transport.Resume()
}

// The device's dirty log: the pages vio's back-end writes for the guest
// (read buffers, the used rings) come out of TakeLog, once, while the log
// runs; a back-end that restarts meanwhile gets the log too.
func TestDirtyLog(t *testing.T) {
	mem := sharedRAM(t)
	sock := filepath.Join(t.TempDir(), "vu.sock")
	a := startVio(t, sock, blocktest.NewMem(1<<20))
	m := newMachine(t, mem, vufront.Config{Socket: sock})
	if err := m.dev.CanLog(); err != nil {
		t.Fatal(err)
	}
	m.start(t, false)
	m.write(t, 0, 1, pattern(1))
	const ram = 16 << 20
	take := func() []uint64 {
		t.Helper()
		dst := make([]uint64, ram/4096/64)
		if err := m.dev.TakeLog(0, ram/4096, dst); err != nil {
			t.Fatal(err)
		}
		return slices.Collect(memory.DirtyPages(dst))
	}
	if err := m.dev.StartLog(ram); err != nil {
		t.Fatal(err)
	}
	if got := take(); len(got) != 0 {
		t.Fatalf("pages %#x marked before any I/O", got)
	}
	m.read(t, 1, 1)
	got := take()
	usedPage := m.queues[1].Config().UsedRing / 4096
	if !slices.Contains(got, usedPage) || len(got) < 2 {
		t.Fatalf("marked pages %#x after a read on queue 1, want its used ring's page %#x and the buffer's", got, usedPage)
	}
	for _, p := range got {
		if p != usedPage && (p < (queueBase+queueSpan)/4096 || p >= (queueBase+2*queueSpan)/4096) {
			t.Fatalf("page %#x marked, outside queue 1's rings and data area", p)
		}
	}
	if got := take(); len(got) != 0 {
		t.Fatalf("pages %#x marked twice", got)
	}
	// The back-end restarts: the device reconnects and hands the new one
	// the log.
	a.stop(t)
	startVio(t, sock, blocktest.NewMem(1<<20))
	m.read(t, 0, 1)
	if got := take(); !slices.Contains(got, m.queues[0].Config().UsedRing/4096) {
		t.Fatalf("marked pages %#x after a restart and a read on queue 0", got)
	}
	m.dev.StopLog()
	if got := take(); len(got) != 0 {
		t.Fatalf("pages %#x after StopLog", got)
	}
	m.write(t, 1, 2, pattern(2))
}

// A back-end without LOG_SHMFD and LOG_ALL cannot log, and says so.
func TestCanLogNeedsBackend(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ready, done := make(chan struct{}), make(chan struct{})
	go fuzzBackend(l, &fuzzReader{}, ready, done)
	dev, err := vufront.New(vufront.Config{Socket: sock, Memory: sharedRAM(t), Timeout: time.Second, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	err = dev.CanLog()
	if err == nil || !strings.Contains(err.Error(), "neither VHOST_F_LOG_ALL nor the LOG_SHMFD protocol feature") {
		t.Fatalf("CanLog: %v", err)
	}
	if err := dev.StartLog(1 << 20); err == nil {
		t.Fatal("StartLog without LOG_SHMFD succeeded")
	}
	dev.Close()
	l.Close()
	<-done
}

// A vhost-user NIC with a random MAC saves and restores: the restored
// device serves the guest the source's MAC (from the state, not a new
// random one) and its frames go through the back-end again.
func TestNetSnapshotRestore(t *testing.T) {
	mem := sharedRAM(t)
	sock := filepath.Join(t.TempDir(), "net.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	loop := &loopNet{frames: make(chan []byte, 16)}
	b := &vhostuser.Backend{NewDevice: func() (virtio.QueueServer, error) { return loop, nil }}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- b.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-served })

	m := newMachine(t, mem, vufront.Config{Type: virtio.TypeNet, Socket: sock})
	mac := func(m *machine) []byte {
		b := make([]byte, 6)
		for i := range b {
			b[i] = byte(m.mc.Guest.ReadDeviceConfig(uint64(i), 1))
		}
		return b
	}
	loopback := func(m *machine, what string) {
		t.Helper()
		rx := m.submit(t, 0, nil, []uint32{2048})
		frame := append(make([]byte, 12), what...)
		if tx := m.submit(t, 1, [][]byte{frame}, nil); m.next(t, 1).ID != tx {
			t.Fatal("transmit completed out of turn")
		}
		if u := m.next(t, 0); u.ID != rx || !bytes.Equal(u.Data[:u.Len], frame) {
			t.Fatalf("received %q, sent %q", u.Data[:u.Len], frame)
		}
	}
	m.start(t, false)
	loopback(m, "before the snapshot")
	want := mac(m)
	snap := save(t, m)
	if err := m.dev.Release(); err != nil {
		t.Fatal(err)
	}
	m2 := restoreCfg(t, vufront.Config{Type: virtio.TypeNet, Socket: sock, Memory: mem}, snap, m)
	if got := mac(m2); !bytes.Equal(got, want) {
		t.Fatalf("the restored NIC's MAC is %x, the guest had %x", got, want)
	}
	loopback(m2, "after the restore")
}

// heldDisk holds writes at sector 50 until release is closed, and says
// when one arrived.
type heldDisk struct {
	block.Backend // only ReadAt and WriteAt: no vectored I/O past WriteAt
	entered       chan struct{}
	release       chan struct{}
}

func (d *heldDisk) WriteAt(p []byte, off int64) (int, error) {
	if off == 50*sector {
		d.entered <- struct{}{}
		<-d.release
	}
	return d.Backend.WriteAt(p, off)
}

// A request the back-end holds when the device pauses: the pause returns
// only once it completed, its used entry written, and the state's base
// is past it; nothing is in flight in the saved state, and the restored
// device serves the next request.
func TestPauseWaitsForInFlight(t *testing.T) {
	mem := sharedRAM(t)
	sock := filepath.Join(t.TempDir(), "vu.sock")
	disk := &heldDisk{Backend: blocktest.NewMem(1 << 20), entered: make(chan struct{}, 1), release: make(chan struct{})}
	startVio(t, sock, disk)
	m := newMachine(t, mem, vufront.Config{Socket: sock})
	m.start(t, false)
	h := m.submit(t, 0, [][]byte{header(blk.TypeOut, 50), pattern(50)}, []uint32{1})
	<-disk.entered
	paused := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		paused <- m.mc.Transport.Pause(ctx)
	}()
	select {
	case err := <-paused:
		t.Fatalf("Pause returned (%v) with a request on the back-end", err)
	default:
	}
	close(disk.release)
	if err := <-paused; err != nil {
		t.Fatal(err)
	}
	if n := m.queues[0].UsedIdx(); n != 1 {
		t.Fatalf("used index %d after the pause, want the held request's 1", n)
	}
	st, err := m.dev.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if !st.Queues[0].Running || st.Queues[0].Base != 1 {
		t.Fatalf("queue 0 saved as %+v, want running at base 1", st.Queues[0])
	}
	if u, ok, err := m.queues[0].GetUsed(); err != nil || !ok || u.ID != h || u.Data[0] != 0 {
		t.Fatalf("the held request: %+v %v %v", u, ok, err)
	}
	m.mc.Transport.Resume()
	m.write(t, 0, 51, pattern(51))
	if got := m.read(t, 1, 50); !bytes.Equal(got, pattern(50)) {
		t.Fatal("the held write did not land")
	}
}
