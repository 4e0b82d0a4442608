package vufront_test

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/viovmm/vio/block"
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
	f, err := raw.Open(img, raw.Options{})
	if err != nil {
		return err
	}
	// Every process wraps the disk alike, so that each offers the same
	// features (the wrapper hides discard and write-zeroes): a back-end
	// that comes back with others is refused, rightly.
	disk := holdingDisk{f, math.MaxInt64}
	if v := os.Getenv("VUFRONT_BACKEND_HOLD_FROM"); v != "" {
		from, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return err
		}
		disk.from = from * sector
	}
	fl, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		return err
	}
	b := &vhostuser.Backend{NewDevice: func() (virtio.QueueServer, error) {
		return blk.New(disk, blk.Config{Serial: "vufront", NumQueues: 2, Workers: 4})
	}, Log: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	return b.Serve(ctx, fl.(*net.UnixListener))
}

// holdingDisk never finishes a write at or past from (until the process
// is killed): requests the back-end has taken and not completed, for the
// next back-end to find in the inflight region.
type holdingDisk struct {
	block.Backend
	from int64
}

func (h holdingDisk) WriteAt(p []byte, off int64) (int, error) {
	if off >= h.from {
		select {}
	}
	return h.Backend.WriteAt(p, off)
}

// backendProc is vio's back-end in a process of its own.
type backendProc struct{ *daemon }

// resumed reports whether the back-end resubmitted requests a killed one
// left in its inflight region (it logs that).
func (p *backendProc) resumed() bool {
	return strings.Contains(p.stderr.String(), "resumes with requests a previous back-end left in flight")
}

func startBackendProc(t testing.TB, img, sock string) killable {
	t.Helper()
	return startBackendProcEnv(t, img, sock)
}

// startHoldingBackendProc is startBackendProc whose writes from sector
// holdFrom on never finish.
func startHoldingBackendProc(holdFrom int) func(t testing.TB, img, sock string) killable {
	return func(t testing.TB, img, sock string) killable {
		t.Helper()
		return startBackendProcEnv(t, img, sock, "VUFRONT_BACKEND_HOLD_FROM="+strconv.Itoa(holdFrom))
	}
}

func startBackendProcEnv(t testing.TB, img, sock string, env ...string) killable {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), "VUFRONT_BACKEND_IMAGE="+img), env...)
	return &backendProc{startDaemon(t, sock, "back-end", cmd)}
}
