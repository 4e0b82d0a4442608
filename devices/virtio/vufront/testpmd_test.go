package vufront_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	virtionet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/devices/virtio/vufront"
	"github.com/viovmm/vio/virtio"
)

const testpmdPath = "/usr/bin/dpdk-testpmd"

// testpmd is DPDK's testpmd (Debian's dpdk-dev) as a vhost-user-net
// back-end: one net_vhost port listening on a socket, each frame it
// receives from the guest sent straight back to the guest
// (--port-topology=loop, io forwarding). No hugepages (--no-huge), no
// PCI. Its forwarding core polls, so the tests keep it short-lived.
type testpmd struct {
	*daemon
	stdin io.WriteCloser
}

// startTestpmd starts testpmd listening on sock. vio waits for the socket
// to listen (its first connection and its reconnections retry), so
// nothing here waits for testpmd to come up. A killed testpmd leaves its
// socket file, which the next one cannot bind: it is removed first.
func startTestpmd(t *testing.T, sock string) *testpmd {
	t.Helper()
	if _, err := os.Stat(testpmdPath); err != nil {
		t.Skipf("DPDK testpmd not installed (Debian package dpdk-dev): %v", err)
	}
	os.Remove(sock)
	// --no-shconf and a file prefix of the socket's name: two testpmds
	// (the killed one's files) never share runtime state.
	cmd := exec.Command(testpmdPath, "--no-pci", "--no-huge", "-m", "128", "--no-shconf",
		"--file-prefix", "vufront-"+strconv.Itoa(os.Getpid()), "--lcores", "0@0,1@0",
		"--vdev", "net_vhost0,iface="+sock+",queues=1",
		"--", "--forward-mode=io", "--port-topology=loop", "--total-num-mbufs=2048")
	d := &testpmd{daemon: &daemon{cmd: cmd}}
	cmd.Stdout = &d.stderr
	cmd.Stderr = &d.stderr
	// Non-interactive testpmd forwards until it reads a line: its stdin
	// stays open for its life.
	var err error
	if d.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.kill()
		if t.Failed() {
			t.Logf("testpmd output:\n%s", d.stderr.String())
		}
	})
	return d
}

var testpmdTotals = regexp.MustCompile(`(?s)Accumulated forward statistics.*?RX-packets: +(\d+).*?TX-packets: +(\d+)`)

// stop ends testpmd the ordinary way (a line on its stdin) and returns
// the packets it received and sent, from its exit summary.
func (p *testpmd) stop(t *testing.T) (rx, tx int) {
	t.Helper()
	p.stdin.Write([]byte("\n"))
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("testpmd: %v", err)
		}
	case <-time.After(wait):
		t.Fatalf("testpmd did not exit within %v of its line", wait)
	}
	m := testpmdTotals.FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatalf("no forward statistics in testpmd's output:\n%s", p.stderr.String())
	}
	rx, _ = strconv.Atoi(m[1])
	tx, _ = strconv.Atoi(m[2])
	return rx, tx
}

// TestNetTestpmd: vio's vhost-user NIC against DPDK's net_vhost, whose
// socket it connects to as the client: each frame the guest sends comes
// back on its receive queue intact; testpmd is SIGKILLed and another
// started on the same socket, vio reconnects (once), and frames flow
// again. Each testpmd's own count says the frames went through it.
func TestNetTestpmd(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "pmd.sock")
	a := startTestpmd(t, sock)
	m := newMachine(t, sharedRAM(t), vufront.Config{Type: virtio.TypeNet, Socket: sock})
	// net_vhost offers HOST_ECN without the host TSO bits it requires
	// (tso=0 by default); the guest must not be offered it.
	f := m.mc.Guest.DeviceFeatures()
	if f&virtionet.FeatureHostECN != 0 && f&(virtionet.FeatureHostTSO4|virtionet.FeatureHostTSO6) == 0 {
		t.Errorf("the guest is offered HOST_ECN without HOST_TSO4 or HOST_TSO6 (%#x)", f)
	}
	m.start(t, true)
	echo := func(i int) {
		t.Helper()
		rx := m.submit(t, 0, nil, []uint32{2048})
		// A virtio-net header (no offload) and a frame of a local
		// experimental EtherType.
		frame := make([]byte, 12+64)
		copy(frame[12:], []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5})
		copy(frame[26:], fmt.Sprintf("frame %d through testpmd", i))
		m.submit(t, 1, [][]byte{frame}, nil)
		m.next(t, 1)
		u := m.next(t, 0)
		if u.ID != rx || u.Len != uint32(len(frame)) || !bytes.Equal(u.Data[12:u.Len], frame[12:]) {
			t.Fatalf("frame %d: received % x (head %d, len %d)", i, u.Data[:u.Len], u.ID, u.Len)
		}
	}
	for i := range 3 {
		echo(i)
	}
	// SIGKILL: testpmd says nothing to vio; the socket just closes.
	a.kill()
	b := startTestpmd(t, sock)
	for i := 3; i < 6; i++ {
		echo(i)
	}
	if n := m.dev.Reconnects(); n != 1 {
		t.Errorf("%d reconnections, want 1", n)
	}
	if err := m.mc.Guest.Reset(); err != nil {
		t.Fatal(err)
	}
	if rx, tx := b.stop(t); rx != 3 || tx != 3 {
		t.Errorf("the restarted testpmd forwarded %d frames in, %d out; the guest sent 3 after the restart", rx, tx)
	}
}
