// Package events is vio's event monitor: a stream of structured events
// (the VM booted, paused, a device needs a reset, the guest panicked, ...)
// in Cloud Hypervisor's event-monitor shape, for files, descriptors and
// API clients.
//
// Publishing never blocks the VMM: every consumer has a bounded buffer,
// and an event that does not fit is dropped for that consumer and counted.
// The consumer then gets an "events-dropped" event saying how many it
// missed before its next event, so a gap in the stream is never silent.
package events

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Event is one thing that happened. Its JSON form is Cloud Hypervisor's:
//
//	{"timestamp":{"secs":1,"nanos":500},"source":"vm","event":"booted","properties":null}
//
// Timestamp is the time since the Monitor started.
type Event struct {
	Timestamp  Duration          `json:"timestamp"`
	Source     string            `json:"source"`
	Event      string            `json:"event"`
	Properties map[string]string `json:"properties"`
}

// Duration is a time.Duration that marshals as {"secs":N,"nanos":N}, the
// way Cloud Hypervisor's event monitor writes its timestamps.
type Duration time.Duration

type secsNanos struct {
	Secs  uint64 `json:"secs"`
	Nanos uint32 `json:"nanos"`
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	n := max(time.Duration(d), 0)
	return json.Marshal(secsNanos{Secs: uint64(n / time.Second), Nanos: uint32(n % time.Second)})
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s secsNanos
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	if s.Nanos >= uint32(time.Second) || s.Secs > uint64(1<<63-1)/uint64(time.Second)-1 {
		return fmt.Errorf("events: timestamp %d s %d ns out of range", s.Secs, s.Nanos)
	}
	*d = Duration(time.Duration(s.Secs)*time.Second + time.Duration(s.Nanos))
	return nil
}

// Sources of vio's events (Cloud Hypervisor's names where it has them).
const (
	SourceVMM    = "vmm"           // the VMM process: starting, shutdown
	SourceVM     = "vm"            // the VM's lifecycle
	SourceGuest  = "guest"         // what the guest did: panic
	SourceDevice = "virtio-device" // a virtio device: activated, reset, needs-reset
	SourceDisk   = "disk"          // a disk's back-end: io-error
	SourceVio    = "vio"           // the monitor itself: events-dropped
)

// Publisher is what emitters hold. Publish records an event with
// properties given as key, value pairs (a missing last value is ""). It
// never blocks, never fails and may be called from any goroutine,
// including vCPU threads; a nil *Monitor is a Publisher that drops
// everything.
type Publisher interface {
	Publish(source, event string, kv ...string)
}

var _ Publisher = (*Monitor)(nil)

// Monitor fans events out to its subscribers.
type Monitor struct {
	start time.Time

	mu   sync.Mutex // guards subs and each subscription's lost count
	subs map[*Subscription]struct{}

	published, dropped atomic.Uint64
}

// NewMonitor returns a Monitor whose timestamps count from now.
func NewMonitor() *Monitor {
	return &Monitor{start: time.Now(), subs: map[*Subscription]struct{}{}}
}

// Publish implements Publisher.
func (m *Monitor) Publish(source, event string, kv ...string) {
	if m == nil {
		return
	}
	e := Event{Timestamp: Duration(time.Since(m.start)), Source: source, Event: event}
	if len(kv) > 0 {
		e.Properties = make(map[string]string, (len(kv)+1)/2)
		for i := 0; i < len(kv); i += 2 {
			v := ""
			if i+1 < len(kv) {
				v = kv[i+1]
			}
			e.Properties[kv[i]] = v
		}
	}
	m.published.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	for s := range m.subs {
		s.offer(e)
	}
}

// Stats reports how many events were published and how many deliveries
// to subscribers were dropped because their buffers were full.
func (m *Monitor) Stats() (published, dropped uint64) {
	if m == nil {
		return 0, 0
	}
	return m.published.Load(), m.dropped.Load()
}

// Subscribers reports how many subscriptions are open.
func (m *Monitor) Subscribers() int {
	if m == nil {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.subs)
}

// DefaultBuffer is the buffer of a subscription that asks for none.
const DefaultBuffer = 256

// Subscribe returns a subscription that receives every event published
// from now on, holding up to buffer of them (DefaultBuffer if buffer <= 0)
// until they are read. A nil Monitor's subscription receives nothing.
func (m *Monitor) Subscribe(buffer int) *Subscription {
	if buffer <= 0 {
		buffer = DefaultBuffer
	}
	// One slot is kept for the events-dropped notice.
	s := &Subscription{m: m, ch: make(chan Event, buffer+1)}
	if m == nil {
		return s
	}
	m.mu.Lock()
	m.subs[s] = struct{}{}
	m.mu.Unlock()
	return s
}

// Subscription is one consumer's bounded queue of events.
type Subscription struct {
	m       *Monitor
	ch      chan Event
	lost    uint64 // dropped since the last delivery; guarded by m.mu
	dropped atomic.Uint64
	once    sync.Once
}

// offer queues e without blocking; m.mu is held.
func (s *Subscription) offer(e Event) {
	if s.lost > 0 {
		// The notice goes first, so the consumer learns of the gap where
		// it was. It needs a free slot besides the one for e.
		if len(s.ch)+2 > cap(s.ch) {
			s.drop()
			return
		}
		s.ch <- Event{Timestamp: e.Timestamp, Source: SourceVio, Event: "events-dropped",
			Properties: map[string]string{"count": strconv.FormatUint(s.lost, 10)}}
		s.lost = 0
	}
	// The last slot is reserved for a notice.
	if len(s.ch)+1 >= cap(s.ch) {
		s.drop()
		return
	}
	s.ch <- e
}

func (s *Subscription) drop() {
	s.lost++
	s.dropped.Add(1)
	s.m.dropped.Add(1)
}

// Events returns the channel the subscription's events arrive on. It is
// closed by Close.
func (s *Subscription) Events() <-chan Event { return s.ch }

// Dropped reports how many events this subscription has lost.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close ends the subscription: no more events are queued, and Events is
// closed once the ones already queued have been read. It may be called
// more than once.
func (s *Subscription) Close() {
	if s.m != nil {
		// Under m.mu, so that no offer is sending on ch as it closes.
		s.m.mu.Lock()
		defer s.m.mu.Unlock()
		delete(s.m.subs, s)
	}
	s.once.Do(func() { close(s.ch) })
}
