// Package metrics exposes vio's counters to Prometheus: a collector that
// reads the VM's existing counters on every scrape (it keeps none of its
// own), and an HTTP endpoint for it on TCP or a UNIX socket. The
// exposition format is client_golang's.
package metrics

import (
	"regexp"
	"sort"
	"strings"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/internal/latency"
	"github.com/viovmm/vio/vmm"
)

// Source is what the collector reads: vmm.Controller, whose documentation
// holds the contract. Counters are vm.counters' (by device, then name);
// Latencies may be nil.
type Source interface {
	Info() (vmm.Info, error)
	Counters() (map[string]map[string]int64, error)
	Latencies() map[string]map[string]latency.Snapshot
}

var _ Source = (*vmm.Controller)(nil)

// Collector is a prometheus.Collector over a Source and an event monitor.
// The metrics it yields depend on the VM's devices, so it is an
// "unchecked" collector: Describe announces nothing.
type Collector struct {
	src Source
	ev  *events.Monitor // nil: no event metrics
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector of src's and ev's counters.
func NewCollector(src Source, ev *events.Monitor) *Collector {
	return &Collector{src: src, ev: ev}
}

// Describe implements prometheus.Collector (unchecked: it sends nothing).
func (c *Collector) Describe(chan<- *prometheus.Desc) {}

// The states vio_vm_state reports, one series each.
var states = []vmm.State{vmm.StateCreated, vmm.StateRunning, vmm.StatePaused, vmm.StateShutdown}

var (
	stateDesc = prometheus.NewDesc("vio_vm_state",
		"1 for the state the VM is in (Created, Running, Paused, Shutdown), 0 for the others; all 0 with no VM.",
		[]string{"state"}, nil)
	exitsDesc = prometheus.NewDesc("vio_vcpu_exits_total",
		"Returns from KVM_RUN, by vCPU and KVM exit reason.", []string{"vcpu", "reason"}, nil)
	latencyDesc = prometheus.NewDesc("vio_disk_request_duration_seconds",
		"Time from a virtio-blk request leaving the available ring to its used-ring entry, by disk and request kind.",
		[]string{"device", "op"}, nil)
	publishedDesc = prometheus.NewDesc("vio_events_published_total",
		"Events published by the event monitor.", nil, nil)
	droppedDesc = prometheus.NewDesc("vio_events_dropped_total",
		"Event deliveries dropped because a consumer's buffer was full (summed over consumers).", nil, nil)
)

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	var state vmm.State
	if info, err := c.src.Info(); err == nil {
		state = info.State
	}
	for _, s := range states {
		v := 0.0
		if s == state {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(stateDesc, prometheus.GaugeValue, v, string(s))
	}
	if c.ev != nil {
		p, d := c.ev.Stats()
		ch <- prometheus.MustNewConstMetric(publishedDesc, prometheus.CounterValue, float64(p))
		ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(d))
	}
	if counters, err := c.src.Counters(); err == nil {
		collectCounters(ch, counters)
	}
	collectLatencies(ch, c.src.Latencies())
}

var vcpuName = regexp.MustCompile(`^vcpu([0-9]+)$`)

// collectCounters turns vm.counters into metrics:
//
//	vcpuN: exits_REASON -> vio_vcpu_exits_total{vcpu="N",reason="REASON"}
//	       NAME         -> vio_vcpu_NAME_total{vcpu="N"}
//	DEVICE: device_Name    -> vio_device_name_total{device="DEVICE"}
//	        transport_Name -> vio_device_transport_name_total{device="DEVICE"}
//	        queues_N_Name  -> vio_device_queue_name_total{device="DEVICE",queue="N"}
//
// with names in snake case; a counter whose name starts with max_ is a
// high-water mark and becomes a gauge without _total.
func collectCounters(ch chan<- prometheus.Metric, counters map[string]map[string]int64) {
	descs := map[string]*prometheus.Desc{}
	desc := func(name, help, label string) *prometheus.Desc {
		d, ok := descs[name]
		if !ok {
			d = prometheus.NewDesc(name, help, []string{label}, nil)
			descs[name] = d
		}
		return d
	}
	for _, dev := range sortedKeys(counters) {
		m := counters[dev]
		if cpu := vcpuName.FindStringSubmatch(dev); cpu != nil {
			for _, k := range sortedKeys(m) {
				if reason, ok := strings.CutPrefix(k, "exits_"); ok {
					ch <- prometheus.MustNewConstMetric(exitsDesc, prometheus.CounterValue, float64(m[k]), cpu[1], reason)
					continue
				}
				name, typ := metricName("vio_vcpu_", snake(k))
				ch <- prometheus.MustNewConstMetric(desc(name, "vCPU counter "+k+" (see vm.counters), by vCPU.", "vcpu"), typ, float64(m[k]), cpu[1])
			}
			continue
		}
		for _, k := range sortedKeys(m) {
			part, field, ok := strings.Cut(k, "_")
			if !ok {
				part, field = "", k
			}
			if part == "queues" {
				// queues_N_Name: a counter of queue (pair) N.
				if q, name, ok := strings.Cut(field, "_"); ok {
					n, typ := metricName("vio_device_queue_", snake(name))
					ch <- prometheus.MustNewConstMetric(queueDesc(descs, n, name), typ, float64(m[k]), dev, q)
					continue
				}
			}
			base := snake(field)
			if part == "transport" {
				base = "transport_" + base
			}
			name, typ := metricName("vio_device_", base)
			ch <- prometheus.MustNewConstMetric(desc(name, "Device counter "+base+" (see vm.counters), by device.", "device"), typ, float64(m[k]), dev)
		}
	}
}

// queueDesc is the description of a per-queue counter (a NIC's queue
// pairs), kept in descs with the others.
func queueDesc(descs map[string]*prometheus.Desc, name, field string) *prometheus.Desc {
	d, ok := descs[name]
	if !ok {
		d = prometheus.NewDesc(name, "Queue counter "+field+" (see vm.counters), by device and queue (pair).", []string{"device", "queue"}, nil)
		descs[name] = d
	}
	return d
}

// metricName names a counter: max_ names are gauges, the rest counters
// with Prometheus' _total suffix.
func metricName(prefix, base string) (string, prometheus.ValueType) {
	if strings.HasPrefix(base, "max_") {
		return prefix + base, prometheus.GaugeValue
	}
	return prefix + base + "_total", prometheus.CounterValue
}

func collectLatencies(ch chan<- prometheus.Metric, lat map[string]map[string]latency.Snapshot) {
	for _, dev := range sortedKeys(lat) {
		for _, op := range sortedKeys(lat[dev]) {
			s := lat[dev][op]
			buckets := make(map[float64]uint64, len(latency.Bounds))
			var cum uint64
			for i, b := range latency.Bounds {
				cum += s.Counts[i]
				buckets[b.Seconds()] = cum
			}
			ch <- prometheus.MustNewConstHistogram(latencyDesc, s.Count(), s.Sum.Seconds(), buckets, dev, op)
		}
	}
}

// snake turns a Go field name (ReadBytes, IOErrors, GetIDs) into a
// metric name part (read_bytes, io_errors, get_ids); names in snake case
// already stay as they are. Anything outside [a-zA-Z0-9_] becomes _.
func snake(s string) string {
	r := []rune(s)
	var b strings.Builder
	for i, c := range r {
		if unicode.IsUpper(c) && i > 0 {
			prev := r[i-1]
			nextLower := i+1 < len(r) && unicode.IsLower(r[i+1])
			// An acronym's plural s (IDs) does not start a word.
			plural := i+1 < len(r) && r[i+1] == 's' && (i+2 == len(r) || unicode.IsUpper(r[i+2]))
			if unicode.IsLower(prev) || unicode.IsDigit(prev) || unicode.IsUpper(prev) && nextLower && !plural {
				b.WriteByte('_')
			}
		}
		switch {
		case c < 0x80 && (unicode.IsLetter(c) || unicode.IsDigit(c)):
			b.WriteRune(unicode.ToLower(c))
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
