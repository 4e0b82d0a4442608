package multipath_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/multipath"
	"github.com/viovmm/vio/block/nbd"
	"golang.org/x/sys/unix"
)

// qemuNBD starts qemu-nbd serving img on a unix socket, without image
// locking so that two servers can share the raw file, and returns the
// server's pid. --fork returns once the server listens, so the socket is
// there to dial when it returns.
func qemuNBD(t *testing.T, img, sock string) int {
	t.Helper()
	os.Remove(sock)
	pidFile := sock + ".pid"
	out, err := exec.Command("qemu-nbd", "--fork", "--pid-file", pidFile, "--image-opts",
		"driver=raw,file.driver=file,file.filename="+img+",file.locking=off",
		"-k", sock, "-x", "x", "-t").CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-nbd: %v\n%s", err, out)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("qemu-nbd's pid file: %v", err)
	}
	t.Cleanup(func() { kill(t, pid) })
	return pid
}

// kill kills the server pid (frozen or not) and returns once it is gone:
// it is not our child (--fork), so its exit is awaited through a pidfd.
func kill(t *testing.T, pid int) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // gone already
	}
	defer unix.Close(fd)
	unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, -1); err != unix.EINTR {
			if err != nil {
				t.Errorf("waiting for qemu-nbd %d to exit: %v", pid, err)
			}
			return
		}
	}
}

func dialUnix(t *testing.T, sock string) *nbd.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nbd.Dial(ctx, "nbd+unix:///x?socket="+sock, nbd.Options{ReplayBuffer: -1, ReconnectAttempts: 1, ReconnectBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatalf("qemu-nbd on %s: %v", sock, err)
	}
	return c
}

// Two qemu-nbd servers of one raw file. The active one is frozen
// (SIGSTOP) under a stream of writes and reads: the request is re-issued
// on the other after the timeout; then it is killed, started again,
// probed and used. No error reaches the caller and the file matches a
// model.
func TestQemuNBDStallAndKill(t *testing.T) {
	if _, err := exec.LookPath("qemu-nbd"); err != nil {
		t.Fatal("qemu-nbd is not installed: run scripts/setup-host (package qemu-utils)")
	}
	const sz = 4 << 20
	dir := t.TempDir()
	img := filepath.Join(dir, "shared.img")
	if err := os.WriteFile(img, make([]byte, sz), 0o600); err != nil {
		t.Fatal(err)
	}
	socks := []string{filepath.Join(dir, "s0"), filepath.Join(dir, "s1")}
	srv0 := qemuNBD(t, img, socks[0])
	qemuNBD(t, img, socks[1])
	be, err := multipath.NewBackend([]block.Backend{dialUnix(t, socks[0]), dialUnix(t, socks[1])},
		multipath.Options{Timeout: 2 * time.Second, ProbeInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	m := multipath.Of(be)
	model := make([]byte, sz)
	rng := rand.New(rand.NewPCG(3, 3))
	run := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			off := rng.Int64N(sz/4096-8) * 4096
			p := make([]byte, (1+rng.IntN(8))*4096)
			if i%2 == 0 {
				for j := range p {
					p[j] = byte(rng.Uint32())
				}
				if _, err := be.WriteAt(p, off); err != nil {
					t.Fatalf("op %d write: %v", i, err)
				}
				copy(model[off:], p)
				continue
			}
			if _, err := be.ReadAt(p, off); err != nil {
				t.Fatalf("op %d read: %v", i, err)
			}
			if !bytes.Equal(p, model[off:off+int64(len(p))]) {
				t.Fatalf("op %d: read at %d differs from the model", i, off)
			}
		}
	}
	run(0, 100)
	if st := m.Status(); st.Paths[0].State != "active" || st.Paths[1].Requests != 0 {
		t.Fatalf("before the stall: %+v", st)
	}
	syscall.Kill(srv0, syscall.SIGSTOP)
	t0 := time.Now()
	run(100, 200)
	t.Logf("100 ops with the active server frozen: %v", time.Since(t0))
	st := m.Status()
	if st.Paths[0].State != "failed" || st.Paths[1].Reissued != 1 || st.Paths[1].State != "active" {
		t.Fatalf("after the stall: %+v", st)
	}
	// Killed while frozen: what it held never lands.
	kill(t, srv0)
	run(200, 300)
	qemuNBD(t, img, socks[0])
	var back, rounds int
	for deadline := time.Now().Add(30 * time.Second); back == 0 && time.Now().Before(deadline); {
		// The restarted server listens (--fork), but the path's
		// client reconnects at its own pace: probe until it answers.
		back = m.Probe()
		rounds++
		if back == 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Logf("taken back after %d probe rounds", rounds)
	if back != 1 {
		t.Fatalf("the restarted server was not taken back: %+v", m.Status())
	}
	before := m.Status().Paths[0].Requests
	run(300, 400)
	if st := m.Status(); st.Paths[0].State != "active" || st.Paths[0].Requests == before || st.Zombies != 0 {
		t.Fatalf("after the return: %+v", st)
	}
	if err := be.Flush(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(img)
	if err != nil || !bytes.Equal(got, model) {
		t.Fatalf("image differs from the model (%v)", err)
	}
}
