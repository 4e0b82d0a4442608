package vudriver_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/vhostuser/vudriver"
	"github.com/viovmm/vio/virtio"
)

// serve runs vio's vhost-user-blk back-end over a raw image whose every
// byte differs from its neighbours' sector's, and returns the socket and
// the image's content.
func serve(t *testing.T, size int) (string, []byte) {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.raw")
	content := make([]byte, size)
	for i := range content {
		content[i] = byte(i*7 + i/512)
	}
	if err := os.WriteFile(img, content, 0o600); err != nil {
		t.Fatal(err)
	}
	disk, err := raw.Open(img, raw.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { disk.Close() })
	sock := filepath.Join(dir, "vu.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	b := &vhostuser.Backend{NewDevice: func() (virtio.QueueServer, error) { return blk.New(disk, blk.Config{}) }, Timeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- b.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	return sock, content
}

// TestRun: reads at random offsets, each slot reused many times over,
// return the image's bytes at their offsets; a run stops at its count,
// and a second run carries on counting.
func TestRun(t *testing.T) {
	for _, size := range []int{512, 4096} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			sock, content := serve(t, 1<<20)
			check := func(off int64, data []byte) error {
				if !bytes.Equal(data, content[off:off+int64(len(data))]) {
					return fmt.Errorf("not the image's bytes")
				}
				return nil
			}
			d, err := vudriver.Dial(sock, vudriver.Config{Depth: 8, Size: size, Check: check})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if c := d.Capacity(); c != 1<<20 {
				t.Fatalf("capacity %d", c)
			}
			if err := d.Run(context.Background(), 500); err != nil {
				t.Fatal(err)
			}
			if n := d.Completed(); n != 500 {
				t.Fatalf("%d reads completed in a run of 500", n)
			}
			if err := d.Run(context.Background(), 3); err != nil {
				t.Fatal(err)
			}
			if n := d.Completed(); n != 503 {
				t.Fatalf("%d reads completed after a second run of 3", n)
			}
		})
	}
}

// TestRunStopsWithContext: a cancelled run returns with nothing in
// flight, and a failing check ends a run with its error.
func TestRunStopsWithContext(t *testing.T) {
	sock, _ := serve(t, 1<<20)
	bad := false
	d, err := vudriver.Dial(sock, vudriver.Config{Check: func(int64, []byte) error {
		if bad {
			return fmt.Errorf("refused")
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Run(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if n := d.Completed(); n != 0 {
		t.Fatalf("a cancelled run completed %d reads", n)
	}
	bad = true
	if err := d.Run(context.Background(), 10); err == nil {
		t.Fatal("a run whose check fails returned no error")
	}
}

func TestConfig(t *testing.T) {
	sock, _ := serve(t, 1<<20)
	for _, c := range []vudriver.Config{{Depth: vudriver.MaxDepth + 1}, {Size: 1000}} {
		if d, err := vudriver.Dial(sock, c); err == nil {
			d.Close()
			t.Errorf("%+v accepted", c)
		}
	}
}
