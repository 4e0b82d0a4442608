package metrics

import (
	"context"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/viovmm/vio/devices/e1000"
	"github.com/viovmm/vio/devices/virtio/blk"
	virtionet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/internal/latency"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/vmm"
	"github.com/viovmm/vio/vmm/vmmtest"
)

// source is a Source with fixed readings. Its counters are built from
// the devices' real Stats types through vmm.CountersOf, the path
// vm.counters takes, so a renamed field shows up here as a renamed metric.
type source struct {
	state    vmm.State
	counters map[string]map[string]int64
	lat      map[string]map[string]latency.Snapshot
}

func (s *source) Info() (vmm.Info, error) {
	if s.state == vmm.NoVM {
		return vmm.Info{}, vmm.ErrNotCreated
	}
	return vmm.Info{State: s.state}, nil
}

func (s *source) Counters() (map[string]map[string]int64, error) {
	if s.state == vmm.NoVM {
		return nil, vmm.ErrNotCreated
	}
	return s.counters, nil
}

func (s *source) Latencies() map[string]map[string]latency.Snapshot { return s.lat }

func runningSource() *source {
	stats := map[string]any{
		"vcpus": []map[string]any{
			{"exits": map[string]uint64{"IO": 7, "MMIO": 3}, "kicks": uint64(2), "unclaimed_pio": uint64(1)},
			{"exits": map[string]uint64{"IO": 1}, "kicks": uint64(0), "unclaimed_pio": uint64(0)},
		},
		"disk0": map[string]any{
			"transport": virtiopci.Stats{Activations: 1},
			"device":    blk.Stats{Reads: 11, Writes: 5, ReadBytes: 45056, WrittenBytes: 20480, IOErrors: 1, Notifications: 9, Interrupts: 8, MaxInFlight: 4},
		},
		"net0": map[string]any{
			"transport": virtiopci.Stats{Activations: 1},
			"device":    virtionet.Stats{TxFrames: 2, RxFrames: 3, TxBytes: 100, RxBytes: 200},
			"queues":    []virtionet.QueueStats{{TxFrames: 1, RxBytes: 120}, {TxFrames: 1, RxBytes: 80, RxInterrupts: 5}},
		},
		"e1000": map[string]any{"device": e1000.Stats{RxFrames: 6}},
	}
	var h latency.Histogram
	h.Observe(3 * time.Microsecond)
	h.Observe(2 * time.Millisecond)
	h.Observe(time.Minute)
	var empty latency.Histogram
	return &source{
		state:    vmm.StateRunning,
		counters: vmm.CountersOf(stats),
		lat:      map[string]map[string]latency.Snapshot{"disk0": {"read": h.Snapshot(), "write": empty.Snapshot()}},
	}
}

// scrape serves reg's metrics on a UNIX socket the way `--metrics
// unix:PATH` does, fetches them over HTTP and parses the text with
// Prometheus' own parser.
func scrape(t *testing.T, src Source, ev *events.Monitor) map[string]*dto.MetricFamily {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "m.sock")
	l, err := Listen("unix:"+sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(NewRegistry(src, ev), nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	defer func() {
		srv.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := cl.Get("http://localhost" + Path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("content type %q: not the text format", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("Prometheus' parser refused the exposition: %v", err)
	}
	return fams
}

// sample finds the sample of family name whose labels are exactly want.
func sample(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType, want map[string]string) *dto.Metric {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no family %s", name)
	}
	if f.GetType() != typ {
		t.Fatalf("%s is a %v, want %v", name, f.GetType(), typ)
	}
	for _, m := range f.Metric {
		got := map[string]string{}
		for _, l := range m.Label {
			got[l.GetName()] = l.GetValue()
		}
		if len(got) != len(want) {
			continue
		}
		match := true
		for k, v := range want {
			if got[k] != v {
				match = false
			}
		}
		if match {
			return m
		}
	}
	t.Fatalf("%s has no sample with labels %v", name, want)
	return nil
}

func TestScrapeParsesWithPrometheus(t *testing.T) {
	ev := events.NewMonitor()
	sub := ev.Subscribe(1)
	defer sub.Close()
	ev.Publish(events.SourceVM, "booted")
	ev.Publish(events.SourceVM, "paused") // dropped: the buffer holds one
	fams := scrape(t, runningSource(), ev)

	counter, gauge := dto.MetricType_COUNTER, dto.MetricType_GAUGE
	for _, c := range []struct {
		name   string
		typ    dto.MetricType
		labels map[string]string
		value  float64
	}{
		{"vio_vm_state", gauge, map[string]string{"state": "Running"}, 1},
		{"vio_vm_state", gauge, map[string]string{"state": "Paused"}, 0},
		{"vio_vcpu_exits_total", counter, map[string]string{"vcpu": "0", "reason": "IO"}, 7},
		{"vio_vcpu_exits_total", counter, map[string]string{"vcpu": "0", "reason": "MMIO"}, 3},
		{"vio_vcpu_exits_total", counter, map[string]string{"vcpu": "1", "reason": "IO"}, 1},
		{"vio_vcpu_kicks_total", counter, map[string]string{"vcpu": "0"}, 2},
		{"vio_vcpu_unclaimed_pio_total", counter, map[string]string{"vcpu": "0"}, 1},
		{"vio_device_reads_total", counter, map[string]string{"device": "disk0"}, 11},
		{"vio_device_writes_total", counter, map[string]string{"device": "disk0"}, 5},
		{"vio_device_read_bytes_total", counter, map[string]string{"device": "disk0"}, 45056},
		{"vio_device_written_bytes_total", counter, map[string]string{"device": "disk0"}, 20480},
		{"vio_device_io_errors_total", counter, map[string]string{"device": "disk0"}, 1},
		{"vio_device_get_ids_total", counter, map[string]string{"device": "disk0"}, 0},
		{"vio_device_notifications_total", counter, map[string]string{"device": "disk0"}, 9},
		{"vio_device_interrupts_total", counter, map[string]string{"device": "disk0"}, 8},
		{"vio_device_max_in_flight", gauge, map[string]string{"device": "disk0"}, 4},
		{"vio_device_transport_activations_total", counter, map[string]string{"device": "disk0"}, 1},
		{"vio_device_tx_frames_total", counter, map[string]string{"device": "net0"}, 2},
		{"vio_device_rx_bytes_total", counter, map[string]string{"device": "net0"}, 200},
		{"vio_device_rx_frames_total", counter, map[string]string{"device": "e1000"}, 6},
		{"vio_device_queue_tx_frames_total", counter, map[string]string{"device": "net0", "queue": "0"}, 1},
		{"vio_device_queue_rx_bytes_total", counter, map[string]string{"device": "net0", "queue": "0"}, 120},
		{"vio_device_queue_rx_bytes_total", counter, map[string]string{"device": "net0", "queue": "1"}, 80},
		{"vio_device_queue_rx_interrupts_total", counter, map[string]string{"device": "net0", "queue": "1"}, 5},
		{"vio_events_published_total", counter, nil, 2},
		{"vio_events_dropped_total", counter, nil, 1},
	} {
		m := sample(t, fams, c.name, c.typ, c.labels)
		var v float64
		if c.typ == counter {
			v = m.GetCounter().GetValue()
		} else {
			v = m.GetGauge().GetValue()
		}
		if v != c.value {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.value)
		}
	}

	h := sample(t, fams, "vio_disk_request_duration_seconds", dto.MetricType_HISTOGRAM, map[string]string{"device": "disk0", "op": "read"}).GetHistogram()
	if h.GetSampleCount() != 3 {
		t.Errorf("read histogram count %d, want 3", h.GetSampleCount())
	}
	if s := h.GetSampleSum(); s < 60 || s > 60.01 {
		t.Errorf("read histogram sum %v s, want a minute and a little", s)
	}
	// Buckets are cumulative: 1 at 5 µs, 2 from 2.5 ms, still 2 at 10 s;
	// the minute is only in +Inf, which the parser adds.
	for _, b := range h.Bucket {
		ub, n := b.GetUpperBound(), b.GetCumulativeCount()
		var want uint64
		switch {
		case math.IsInf(ub, 1):
			want = 3
		case ub < 5e-6:
			want = 0
		case ub < 2.5e-3:
			want = 1
		default:
			want = 2
		}
		if n != want {
			t.Errorf("bucket le=%v holds %d, want %d", ub, n, want)
		}
	}
	if len(h.Bucket) != len(latency.Bounds)+1 {
		t.Errorf("%d buckets, want %d and +Inf", len(h.Bucket), len(latency.Bounds))
	}
	sample(t, fams, "vio_disk_request_duration_seconds", dto.MetricType_HISTOGRAM, map[string]string{"device": "disk0", "op": "write"})
	// The process collector: what the balloon's RSS check will read.
	sample(t, fams, "process_resident_memory_bytes", gauge, nil)
}

func TestScrapeWithoutVM(t *testing.T) {
	fams := scrape(t, &source{}, nil)
	for _, s := range states {
		if v := sample(t, fams, "vio_vm_state", dto.MetricType_GAUGE, map[string]string{"state": string(s)}).GetGauge().GetValue(); v != 0 {
			t.Errorf("state %s = %v with no VM", s, v)
		}
	}
	for name := range fams {
		if strings.HasPrefix(name, "vio_device_") || strings.HasPrefix(name, "vio_vcpu_") || strings.HasPrefix(name, "vio_events_") {
			t.Errorf("%s with no VM and no monitor", name)
		}
	}
}

func TestSnake(t *testing.T) {
	for in, want := range map[string]string{
		"ReadBytes": "read_bytes", "IOErrors": "io_errors", "GetIDs": "get_ids", "TxTSO": "tx_tso",
		"MaxInFlight": "max_in_flight", "kicks": "kicks", "unclaimed_pio": "unclaimed_pio",
		"Rx2Bytes": "rx2_bytes", "a-b.c": "a_b_c", "queue_0": "queue_0", "ΔX": "_x",
	} {
		if got := snake(in); got != want {
			t.Errorf("snake(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestListenRefusesBadAddresses(t *testing.T) {
	for _, a := range []string{"unix:", "9100", "localhost", "256.1.1.1:99999"} {
		if l, err := Listen(a, nil); err == nil {
			l.Close()
			t.Errorf("%q accepted", a)
		}
	}
	l, err := Listen("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}

// The real Controller (over vmmtest's Machine double) as the source.
func TestScrapeController(t *testing.T) {
	kernel := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(kernel, []byte("not booted"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := vmmtest.NewBuilder()
	c := vmm.NewController(b.Build, nil)
	if err := c.Create(vmmtest.Config(kernel)); err != nil {
		t.Fatal(err)
	}
	if err := c.Boot(); err != nil {
		t.Fatal(err)
	}
	defer c.Delete()
	c.Pause()
	fams := scrape(t, c, nil)
	if v := sample(t, fams, "vio_vm_state", dto.MetricType_GAUGE, map[string]string{"state": "Paused"}).GetGauge().GetValue(); v != 1 {
		t.Errorf("Paused = %v", v)
	}
	if v := sample(t, fams, "vio_vcpu_pauses_total", dto.MetricType_COUNTER, map[string]string{"vcpu": "0"}).GetCounter().GetValue(); v != 1 {
		t.Errorf("pauses = %v", v)
	}
}
