package vhostuser

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

const qemuPath = "/usr/bin/qemu-system-x86_64"

// qemuQueueSize is the size of the rings the qtest guest sets up.
const qemuQueueSize = 32

// qtest drives a QEMU started with -qtest stdio: port I/O and MMIO on the
// machine's buses, with the vCPU halted. The test plays the guest's
// virtio-pci driver through it, and the driver's ring work directly in
// guest RAM, which it maps from the file QEMU's RAM lives in.
type qtest struct {
	t   testing.TB
	in  io.Writer
	out *bufio.Reader
}

func (q *qtest) cmd(format string, a ...any) string {
	q.t.Helper()
	line := fmt.Sprintf(format, a...)
	if _, err := fmt.Fprintln(q.in, line); err != nil {
		q.t.Fatalf("qtest %q: %v", line, err)
	}
	for {
		r, err := q.out.ReadString('\n')
		if err != nil {
			q.t.Fatalf("qtest %q: %v", line, err)
		}
		r = strings.TrimSpace(r)
		if strings.HasPrefix(r, "IRQ") {
			continue
		}
		if r != "OK" && !strings.HasPrefix(r, "OK ") {
			q.t.Fatalf("qtest %q: %s", line, r)
		}
		return strings.TrimPrefix(strings.TrimPrefix(r, "OK"), " ")
	}
}

func (q *qtest) num(s string) uint64 {
	q.t.Helper()
	v, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		q.t.Fatalf("qtest answer %q: %v", s, err)
	}
	return v
}

// PCI configuration space of bus 0, device dev, through ports 0xcf8/0xcfc.
func (q *qtest) cfgAddr(dev, off int) { q.cmd("outl 0xcf8 0x%x", 0x80000000|dev<<11|off&^3) }
func (q *qtest) cfg8(dev, off int) uint8 {
	q.cfgAddr(dev, off)
	return uint8(q.num(q.cmd("inb 0x%x", 0xcfc+off&3)))
}
func (q *qtest) cfg16(dev, off int) uint16 {
	q.cfgAddr(dev, off)
	return uint16(q.num(q.cmd("inw 0x%x", 0xcfc+off&3)))
}
func (q *qtest) cfg32(dev, off int) uint32 {
	q.cfgAddr(dev, off)
	return uint32(q.num(q.cmd("inl 0xcfc")))
}
func (q *qtest) setCfg32(dev, off int, v uint32) {
	q.cfgAddr(dev, off)
	q.cmd("outl 0xcfc 0x%x", v)
}
func (q *qtest) setCfg16(dev, off int, v uint16) {
	q.cfgAddr(dev, off)
	q.cmd("outw 0x%x 0x%x", 0xcfc+off&3, v)
}

func (q *qtest) read8(a uint64) uint8   { return uint8(q.num(q.cmd("readb 0x%x", a))) }
func (q *qtest) read16(a uint64) uint16 { return uint16(q.num(q.cmd("readw 0x%x", a))) }
func (q *qtest) read32(a uint64) uint32 { return uint32(q.num(q.cmd("readl 0x%x", a))) }
func (q *qtest) write8(a uint64, v uint8) {
	q.cmd("writeb 0x%x 0x%x", a, v)
}
func (q *qtest) write16(a uint64, v uint16) { q.cmd("writew 0x%x 0x%x", a, v) }
func (q *qtest) write32(a uint64, v uint32) { q.cmd("writel 0x%x 0x%x", a, v) }
func (q *qtest) write64(a uint64, v uint64) {
	q.write32(a, uint32(v))
	q.write32(a+4, uint32(v>>32))
}

// virtio-pci modern common configuration (virtio 1.2 section 4.1.4.3).
const (
	pciDeviceFeatureSelect = 0x00
	pciDeviceFeature       = 0x04
	pciDriverFeatureSelect = 0x08
	pciDriverFeature       = 0x0c
	pciNumQueues           = 0x12
	pciDeviceStatus        = 0x14
	pciQueueSelect         = 0x16
	pciQueueSize           = 0x18
	pciQueueEnable         = 0x1c
	pciQueueNotifyOff      = 0x1e
	pciQueueDesc           = 0x20
	pciQueueDriver         = 0x28
	pciQueueDevice         = 0x30
)

// TestQEMUFrontend runs QEMU's own vhost-user-blk front-end
// (vhost-user-blk-pci) against vio's back-end, without KVM: QEMU runs with
// its vCPU stopped under -qtest, the test programs the virtio-pci device
// as a guest driver would (features with MQ and EVENT_IDX, two queues, DRIVER_OK, which makes QEMU
// hand the rings to the back-end), lays requests out in guest RAM and kicks
// through the device's notify register, which QEMU forwards on the kick
// eventfd it gave the back-end. Data is checked in the image file.
func TestQEMUFrontend(t *testing.T) {
	if _, err := os.Stat(qemuPath); err != nil {
		t.Fatalf("QEMU is not installed (%v): run scripts/setup-host (package qemu-system-x86)", err)
	}
	img, content, disk := rawImage(t, 4<<20)
	var ref refusals
	b := blkBackend(disk, blk.Config{Serial: "vio-for-qemu", NumQueues: 2}, &ref)
	var blog bytes.Buffer
	b.Log = slog.New(slog.NewTextHandler(&syncWriter{w: &blog}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	defer func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("back-end log:\n%s", blog.String())
		}
	}()
	dir := t.TempDir()
	sock := filepath.Join(dir, "vu.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- b.Serve(ctx, l) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()

	g := startQEMUGuest(t, dir, "socket,id=vu,path="+sock, 2, func() []error { return ref.errs })
	do := g.do
	u := do(0, [][]byte{blkHeader(blkTIn, 2)}, []uint32{sector, 1})
	if u.Data[sector] != blk.StatusOK || !bytes.Equal(u.Data[:sector], content[2*sector:3*sector]) {
		t.Fatalf("read through QEMU: status %d", u.Data[sector])
	}
	pattern := bytes.Repeat([]byte("QEMU front, vio!"), sector/16)
	if u := do(1, [][]byte{blkHeader(blkTOut, 100), pattern}, []uint32{1}); u.Data[0] != blk.StatusOK {
		t.Fatalf("write through QEMU: status %d", u.Data[0])
	}
	if u := do(1, [][]byte{blkHeader(blk.TypeFlush, 0)}, []uint32{1}); u.Data[0] != blk.StatusOK {
		t.Fatalf("flush through QEMU: status %d", u.Data[0])
	}
	if u := do(0, [][]byte{blkHeader(blk.TypeGetID, 0)}, []uint32{blk.IDBytes, 1}); !bytes.HasPrefix(u.Data, []byte("vio-for-qemu")) {
		t.Fatalf("GET_ID through QEMU: %q", u.Data)
	}
	onDisk, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk[100*sector:101*sector], pattern) {
		t.Fatal("sector 100 of the image does not hold what was written through QEMU")
	}
	// More requests than one ring's worth on each queue, so that both
	// rings wrap and EVENT_IDX's kick suppression is exercised.
	for k := range 2 * qemuQueueSize {
		i := k % 2
		if u := do(i, [][]byte{blkHeader(blkTIn, uint64(k))}, []uint32{sector, 1}); u.Data[sector] != blk.StatusOK ||
			!bytes.Equal(u.Data[:sector], onDisk[k*sector:(k+1)*sector]) {
			t.Fatalf("read %d on queue %d: status %d", k, i, u.Data[sector])
		}
	}
	// A device reset makes QEMU stop the rings (GET_VRING_BASE).
	g.q.write8(g.common+pciDeviceStatus, 0)
	if len(ref.errs) != 0 {
		t.Fatalf("the back-end refused QEMU's requests: %v %v", ref.reqs, ref.errs)
	}
}

// qemuGuest is a QEMU machine with a vhost-user-blk-pci device on the
// vhost-user socket its chardev names, which the test drives as the
// guest's virtio-pci driver (see TestQEMUFrontend).
type qemuGuest struct {
	t        *testing.T
	q        *qtest
	common   uint64 // the common configuration's address
	drvs     []*queuetest.Driver
	notifies []uint64
	refusals func() []error
}

// startQEMUGuest starts QEMU in dir with the chardev (id vu) and a device
// of numQueues queues, negotiates features (MQ, EVENT_IDX), sets up the
// queues and sets DRIVER_OK, which makes QEMU start the back-end's rings.
func startQEMUGuest(t *testing.T, dir, chardev string, numQueues int, refusals func() []error) *qemuGuest {
	t.Helper()
	// Guest RAM in a file both QEMU and the test map.
	const ramSize = 64 << 20
	ramPath := filepath.Join(dir, "ram")
	rf, err := os.OpenFile(ramPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rf.Close() })
	if err := rf.Truncate(ramSize); err != nil {
		t.Fatal(err)
	}
	// QEMU starts a vhost-user device only in a running VM, so the vCPU
	// runs, on firmware that is nothing but HLT (interrupts are off at
	// reset): it halts at its first instruction and uses no CPU.
	bios := filepath.Join(dir, "hlt.bin")
	if err := os.WriteFile(bios, bytes.Repeat([]byte{0xf4}, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	const dev = 4
	cmd := exec.Command(qemuPath, "-machine", "pc,memory-backend=mem", "-accel", "tcg", "-bios", bios,
		"-qtest", "stdio", "-qtest-log", "/dev/null", "-display", "none", "-nodefaults", "-m", "64",
		"-object", "memory-backend-file,id=mem,size=64M,share=on,mem-path="+ramPath,
		"-chardev", chardev,
		"-device", fmt.Sprintf("vhost-user-blk-pci-non-transitional,chardev=vu,num-queues=%d,addr=%d.0", numQueues, dev))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("QEMU stderr:\n%s", stderr.String())
		}
	})
	q := &qtest{t: t, in: stdin, out: bufio.NewReader(stdout)}

	if id := q.cfg32(dev, 0); id != 0x10421af4 {
		t.Fatalf("PCI id %#x at 00:%02x.0, want virtio-blk modern (1af4:1042)", id, dev)
	}
	// Find the common and notify capabilities.
	var bar int
	var commonOff, notifyOff uint32
	var notifyMul uint32
	for p := int(q.cfg8(dev, 0x34)); p != 0; p = int(q.cfg8(dev, p+1)) {
		if q.cfg8(dev, p) != 0x09 { // vendor-specific: a virtio capability
			continue
		}
		switch q.cfg8(dev, p+3) {
		case 1:
			bar, commonOff = int(q.cfg8(dev, p+4)), q.cfg32(dev, p+8)
		case 2:
			notifyOff, notifyMul = q.cfg32(dev, p+8), q.cfg32(dev, p+16)
		}
	}
	const barBase = 0xe0000000
	q.setCfg32(dev, 0x10+4*bar, barBase)
	q.setCfg32(dev, 0x14+4*bar, 0)
	q.setCfg16(dev, 0x04, q.cfg16(dev, 0x04)|0x6) // memory space, bus master
	common := uint64(barBase) + uint64(commonOff)

	// The driver's side of the handshake.
	q.write8(common+pciDeviceStatus, 0)
	q.write8(common+pciDeviceStatus, 1|2) // ACKNOWLEDGE, DRIVER
	q.write32(common+pciDeviceFeatureSelect, 1)
	hi := q.read32(common + pciDeviceFeature)
	q.write32(common+pciDeviceFeatureSelect, 0)
	lo := q.read32(common + pciDeviceFeature)
	offered := uint64(hi)<<32 | uint64(lo)
	want := virtio.FeatureVersion1 | virtio.FeatureEventIdx | blk.FeatureFlush | blk.FeatureBlkSize | blk.FeatureSegMax | blk.FeatureMQ
	if offered&want != want {
		t.Fatalf("QEMU offers %#x, want %#x in it", offered, want)
	}
	q.write32(common+pciDriverFeatureSelect, 0)
	q.write32(common+pciDriverFeature, uint32(want))
	q.write32(common+pciDriverFeatureSelect, 1)
	q.write32(common+pciDriverFeature, uint32(want>>32))
	q.write8(common+pciDeviceStatus, 1|2|8) // FEATURES_OK
	if s := q.read8(common + pciDeviceStatus); s&8 == 0 {
		t.Fatalf("FEATURES_OK did not stick (status %#x)", s)
	}
	if n := q.read16(common + pciNumQueues); int(n) != numQueues {
		t.Fatalf("%d queues", n)
	}

	mem, err := memory.NewFromFile(int(rf.Fd()), []memory.FileRegion{{GPA: 0, Size: ramSize}}, memory.Shared)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })

	var drvs []*queuetest.Driver
	var notifies []uint64
	for i := range numQueues {
		drv, err := queuetest.New(mem, uint64(2+i)<<20, qemuQueueSize, 256<<10, true)
		if err != nil {
			t.Fatal(err)
		}
		qc := drv.Config()
		q.write16(common+pciQueueSelect, uint16(i))
		q.write16(common+pciQueueSize, qemuQueueSize)
		q.write64(common+pciQueueDesc, qc.DescTable)
		q.write64(common+pciQueueDriver, qc.AvailRing)
		q.write64(common+pciQueueDevice, qc.UsedRing)
		notifies = append(notifies, uint64(barBase)+uint64(notifyOff)+uint64(q.read16(common+pciQueueNotifyOff))*uint64(notifyMul))
		q.write16(common+pciQueueEnable, 1)
		drvs = append(drvs, drv)
	}
	q.write8(common+pciDeviceStatus, 1|2|8|4) // DRIVER_OK: QEMU starts the back-end's rings
	if s := q.read8(common + pciDeviceStatus); s&0x40 != 0 {
		t.Fatalf("device needs reset after DRIVER_OK (status %#x)", s)
	}

	return &qemuGuest{t: t, q: q, common: common, drvs: drvs, notifies: notifies, refusals: refusals}
}

// submit makes one request available on queue i and kicks through QEMU.
func (g *qemuGuest) submit(i int, out [][]byte, in []uint32) uint16 {
	g.t.Helper()
	head, err := g.drvs[i].Add(out, in)
	if err != nil {
		g.t.Fatal(err)
	}
	if g.drvs[i].NeedsKick() {
		g.q.write16(g.notifies[i], uint16(i))
	}
	return head
}

// used polls queue i's used ring for its next entry (no interrupt
// reaches a stopped vCPU), for at most 30 s: a loaded 2-core CI machine runs the suite next to it.
func (g *qemuGuest) used(i int) queuetest.Used {
	g.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		u, ok, err := g.drvs[i].GetUsed()
		if err != nil {
			g.t.Fatal(err)
		}
		if ok {
			return u
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("no completion within 30 s; refusals %v", g.refusals())
		}
		time.Sleep(time.Millisecond) // polling the used ring, as a polling driver does
	}
}

// do submits one request and waits for it.
func (g *qemuGuest) do(i int, out [][]byte, in []uint32) queuetest.Used {
	g.t.Helper()
	head := g.submit(i, out, in)
	u := g.used(i)
	if u.ID != head {
		g.t.Fatalf("used id %d, want %d", u.ID, head)
	}
	return u
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
