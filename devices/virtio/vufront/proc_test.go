package vufront_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"

	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
)

// The test binary doubles as a back-end process (vio's vhost-user-blk
// back-end with INFLIGHT_SHMFD over a raw image), so a test can SIGKILL
// it as it would a crashed daemon: VUFRONT_BACKEND_IMAGE names the image,
// fd 3 is the listening socket.
func TestMain(m *testing.M) {
	if img := os.Getenv("VUFRONT_BACKEND_IMAGE"); img != "" {
		if err := serveBackend(img); err != nil {
			fmt.Fprintln(os.Stderr, "back-end:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func serveBackend(img string) error {
	disk, err := raw.Open(img, raw.Options{})
	if err != nil {
		return err
	}
	fl, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		return err
	}
	b := &vhostuser.Backend{NewDevice: func() (virtio.QueueServer, error) {
		return blk.New(disk, blk.Config{Serial: "vufront", NumQueues: 2, Workers: 4})
	}}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	return b.Serve(ctx, fl.(*net.UnixListener))
}

// backendProc is vio's back-end in a process of its own.
type backendProc struct{ cmd *exec.Cmd }

func startBackendProc(t testing.TB, img, sock string) killable {
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
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "VUFRONT_BACKEND_IMAGE="+img)
	cmd.ExtraFiles = []*os.File{lf}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &backendProc{cmd: cmd}
	t.Cleanup(p.kill)
	return p
}

func (p *backendProc) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}
