package vufront_test

import (
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/devices/virtio/vufront"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// faultyProxy sits between the device and a back-end. On its first
// connection it breaks the protocol at the front-end's message number
// at: it closes both sides (close), or answers with bytes that are no
// vhost-user reply and carries on (garbage). Later connections (the
// device reconnecting) pass through.
type faultyProxy struct {
	l       *net.UnixListener
	target  string
	at      int
	garbage bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []*net.UnixConn
}

func startProxy(t testing.TB, sock, target string, at int, garbage bool) *faultyProxy {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	p := &faultyProxy{l: l, target: target, at: at, garbage: garbage}
	p.wg.Add(1)
	go p.accept()
	return p
}

func (p *faultyProxy) accept() {
	defer p.wg.Done()
	for n := 0; ; n++ {
		front, err := p.l.AcceptUnix()
		if err != nil {
			return
		}
		back, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: p.target, Net: "unix"})
		if err != nil {
			front.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, front, back)
		p.mu.Unlock()
		at := -1
		if n == 0 {
			at = p.at
		}
		p.wg.Add(2)
		go p.pump(front, back, at)
		go p.pump(back, front, -1)
	}
}

// pump forwards messages from src to dst, breaking at message at.
func (p *faultyProxy) pump(src, dst *net.UnixConn, at int) {
	defer p.wg.Done()
	defer src.Close()
	defer dst.Close()
	in, out := vhostuser.NewConn(src), vhostuser.NewConn(dst)
	for i := 0; ; i++ {
		m, err := in.ReadMessage()
		if err != nil {
			return
		}
		if i == at {
			m.Close()
			if !p.garbage {
				return
			}
			// A reply header for another request, claiming a payload
			// larger than any.
			src.Write([]byte{0x7f, 0, 0, 0, 0x05, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4})
			continue
		}
		err = out.WriteMessage(m.Header, m.Payload, m.FDs)
		m.Close()
		if err != nil {
			return
		}
	}
}

func (p *faultyProxy) close() {
	p.l.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestHostileBackend breaks the connection at each of the device's first
// messages, by closing it or by answering garbage. Each time the device
// either refuses to start (New's error names the socket), or the guest's
// request completes after a reconnection, or the device needs a reset;
// nothing hangs, and every goroutine is gone once the device is closed.
func TestHostileBackend(t *testing.T) {
	if testing.Short() {
		t.Skip("sweeps 60 broken connections")
	}
	base := runtime.NumGoroutine()
	dir := t.TempDir()
	target := filepath.Join(dir, "be.sock")
	mem := sharedRAM(t)
	be := startVio(t, target, blocktest.NewMem(1<<20))
	outcomes := map[string]int{}
	for _, garbage := range []bool{false, true} {
		for at := range 30 {
			sock := filepath.Join(dir, "proxy.sock")
			p := startProxy(t, sock, target, at, garbage)
			outcomes[hostileRound(t, mem, sock)]++
			p.close()
			if t.Failed() {
				t.Fatalf("garbage=%v at message %d", garbage, at)
			}
		}
	}
	t.Logf("outcomes: %v", outcomes)
	if outcomes["refused"] == 0 || outcomes["served"] == 0 {
		t.Fatalf("outcomes %v: the sweep missed New's exchanges or the rings'", outcomes)
	}
	be.stop(t)
	checkGoroutines(t, base)
}

func hostileRound(t *testing.T, mem *memory.Memory, sock string) string {
	t.Helper()
	dev, err := vufront.New(vufront.Config{Socket: sock, Memory: mem, ReconnectTimeout: 2 * time.Second,
		Timeout: 2 * time.Second, Log: testLog(t)})
	if err != nil {
		if !strings.Contains(err.Error(), sock) {
			t.Errorf("New's error does not name the socket: %v", err)
		}
		return "refused"
	}
	defer dev.Close()
	m := &machine{dev: dev}
	m.mc = virtiopcitest.NewMachineOn(t, dev, mem, 4096)
	m.start(t, false)
	h := m.submit(t, 0, [][]byte{header(blk.TypeOut, 1), pattern(1)}, []uint32{1})
	outcome := ""
	for outcome == "" {
		if u, ok, err := m.queues[0].GetUsed(); err != nil {
			t.Fatal(err)
		} else if ok {
			if u.ID != h || u.Data[0] != blk.StatusOK {
				t.Fatalf("completion %+v of head %d", u, h)
			}
			outcome = "served"
			break
		}
		if m.mc.Guest.Status()&virtio.StatusDeviceNeedsReset != 0 {
			outcome = "needs-reset"
			break
		}
		if _, err := m.mc.Router.Wait(wait); err != nil {
			t.Fatalf("neither a completion nor a reset: %v", err)
		}
	}
	if err := m.mc.Guest.Reset(); err != nil {
		t.Fatal(err)
	}
	return outcome
}
