package vmm

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/block/raw"
)

// TestSetDiskInterposers: the run-time controls reach a real graph's
// nodes: a faults rule set through the VM fails reads in its range, a new
// throttle limit is taken, and wrong names and kinds are refused.
func TestSetDiskInterposers(t *testing.T) {
	img := filepath.Join(t.TempDir(), "a.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := graph.Parse([]byte(`{"node":"faults","name":"f0","children":[{"node":"throttle","name":"t0","options":{"ops":{"size":100000,"refill_time":1000}},"children":[{"node":"raw","path":"` + img + `"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	v := &VM{graphs: graph.NewBuilder(graph.Options{}), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	be, err := v.graphs.Open(graph.Disk{ID: "d0", Root: root, Cache: raw.Writeback})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	buf := make([]byte, 512)
	if _, err := be.ReadAt(buf, 4096); err != nil {
		t.Fatalf("read before any rule: %v", err)
	}
	if err := v.SetDiskFaults("f0", []graph.FaultRule{{Error: "EIO", Offset: 4096, Length: 4096}}); err != nil {
		t.Fatal(err)
	}
	if _, err := be.ReadAt(buf, 4096); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read in the rule's range: %v, want EIO", err)
	}
	if _, err := be.ReadAt(buf, 0); err != nil {
		t.Fatalf("read outside the rule's range: %v", err)
	}
	if err := v.SetDiskFaults("f0", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := be.ReadAt(buf, 4096); err != nil {
		t.Fatalf("read after the rules were cleared: %v", err)
	}
	if err := v.SetDiskThrottle("t0", graph.RateLimiterConfig{Ops: &graph.TokenBucket{Size: 1000, RefillTime: 1000}}); err != nil {
		t.Fatal(err)
	}
	if err := v.SetDiskFaults("nope", nil); !errors.Is(err, ErrNoNode) {
		t.Fatalf("an unknown node: %v", err)
	}
	if err := v.SetDiskFaults("t0", nil); err == nil {
		t.Fatal("faults rules for a throttle node were taken")
	}
	if err := v.SetDiskThrottle("f0", graph.RateLimiterConfig{}); err == nil {
		t.Fatal("limits for a faults node were taken")
	}
	if err := v.SetDiskFaults("f0", []graph.FaultRule{{Error: "EWHAT"}}); err == nil {
		t.Fatal("a rule with an unknown error was taken")
	}
}
