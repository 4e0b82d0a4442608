package virtiopci_test

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

func TestOnEvent(t *testing.T) {
	var mu sync.Mutex
	var got []string
	r := newRig(t, virtiopci.Options{OnEvent: func(ev string, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			ev += ": " + err.Error()
		}
		got = append(got, ev)
	}})
	take := func() string {
		mu.Lock()
		defer mu.Unlock()
		s := strings.Join(got, ", ")
		got = nil
		return s
	}
	g := r.g
	// Resets of a device the driver never started are not events.
	g.Reset()
	if s := take(); s != "" {
		t.Fatalf("events before activation: %s", s)
	}
	g.Negotiate(virtio.FeatureVersion1)
	if _, err := g.SetupQueue(virtiopcitest.QueueConfig{Index: 0, Vector: virtiopci.NoVector, Base: 0x10000, DataSize: 0x1000}); err != nil {
		t.Fatal(err)
	}
	g.SetStatus(virtio.StatusDriverOK)
	if s := take(); s != "activated" {
		t.Fatalf("after DRIVER_OK: %q", s)
	}
	g.Reset()
	if s := take(); s != "reset" {
		t.Fatalf("after a reset: %q", s)
	}
	r.dev.mu.Lock()
	r.dev.fail = errors.New("no backend")
	r.dev.mu.Unlock()
	g.Negotiate(virtio.FeatureVersion1)
	g.SetStatus(virtio.StatusDriverOK)
	if s := take(); !strings.HasPrefix(s, "needs-reset: ") || !strings.Contains(s, "no backend") {
		t.Fatalf("after a failed activation: %q", s)
	}
}
