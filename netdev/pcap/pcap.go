// Package pcap is an interposer that mirrors every frame crossing a
// back-end, both ways, into a pcap file (libpcap's classic format,
// Ethernet link type, microsecond timestamps) that tcpdump -r and
// Wireshark read.
//
// Frames are copied into a bounded queue that one goroutine writes out,
// so a slow disk never stalls the NIC: when the queue is full the copy is
// dropped from the capture (the frame itself still goes through) and
// counted in Stats.Dropped. The file is flushed whenever the queue runs
// empty, so a reader sees frames within moments of their crossing.
package pcap

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/filter"
)

// Snaplen is the capture's snapshot length: whole frames, a TSO
// super-frame included.
const Snaplen = 262144

// queueLen bounds the frames waiting to be written.
const queueLen = 4096

// Stats are a mirror's counters.
type Stats struct {
	Written uint64 `json:"written"` // frames in the file
	Dropped uint64 `json:"dropped"` // frames not captured: queue full, or the file failed
	Err     string `json:"err"`     // the first write error, after which nothing more is written
}

type record struct {
	t    time.Time
	data []byte
}

// Mirror is the interposer.
type Mirror struct {
	filter.Base
	q       chan record
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	f       io.Closer
	written atomic.Uint64
	dropped atomic.Uint64
	errMu   sync.Mutex
	err     error
}

var _ netdev.Backend = (*Mirror)(nil)

// Open wraps inner with a mirror into the file at path: a new file, or
// one that already holds an Ethernet capture, which frames are appended
// to (so the capture goes on across a guest reboot, which rebuilds the
// VM's back-ends). Closing the mirror closes the file and inner.
func Open(inner netdev.Backend, path string) (*Mirror, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("pcap mirror: %w", err)
	}
	var hdr [24]byte
	n, err := io.ReadFull(f, hdr[:])
	appending := false
	switch {
	case n == 0 && err == io.EOF:
	case err == nil && isEthernetCapture(hdr[:]):
		appending = true
	default:
		f.Close()
		return nil, fmt.Errorf("pcap mirror: %s exists and is not a pcap capture of Ethernet frames: remove it or name another file", path)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, fmt.Errorf("pcap mirror: %w", err)
	}
	m, err := newMirror(inner, f, !appending)
	if err != nil {
		f.Close()
		return nil, err
	}
	m.f = f
	return m, nil
}

// New wraps inner with a mirror writing a new capture to w.
func New(inner netdev.Backend, w io.Writer) (*Mirror, error) {
	return newMirror(inner, w, true)
}

// isEthernetCapture recognises the header pcapgo writes: little-endian
// microsecond pcap, link type Ethernet.
func isEthernetCapture(h []byte) bool {
	return bytes.Equal(h[:4], []byte{0xd4, 0xc3, 0xb2, 0xa1}) && binary.LittleEndian.Uint32(h[20:]) == uint32(layers.LinkTypeEthernet)
}

func newMirror(inner netdev.Backend, w io.Writer, header bool) (*Mirror, error) {
	bw := bufio.NewWriterSize(w, 256<<10)
	pw := pcapgo.NewWriter(bw)
	if header {
		if err := pw.WriteFileHeader(Snaplen, layers.LinkTypeEthernet); err != nil {
			return nil, fmt.Errorf("pcap mirror: %w", err)
		}
		if err := bw.Flush(); err != nil {
			return nil, fmt.Errorf("pcap mirror: %w", err)
		}
	}
	m := &Mirror{
		Base: filter.Base{Inner: inner},
		q:    make(chan record, queueLen),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go m.writer(pw, bw)
	return m, nil
}

func (m *Mirror) writer(pw *pcapgo.Writer, bw *bufio.Writer) {
	defer close(m.done)
	write := func(r record) {
		if m.failed() {
			m.dropped.Add(1)
			return
		}
		ci := gopacket.CaptureInfo{Timestamp: r.t, CaptureLength: len(r.data), Length: len(r.data)}
		if err := pw.WritePacket(ci, r.data); err != nil {
			m.fail(err)
			m.dropped.Add(1)
			return
		}
		m.written.Add(1)
	}
	flush := func() {
		if !m.failed() {
			if err := bw.Flush(); err != nil {
				m.fail(err)
			}
		}
	}
	for {
		select {
		case r := <-m.q:
			write(r)
			if len(m.q) == 0 {
				flush()
			}
		case <-m.stop:
			for {
				select {
				case r := <-m.q:
					write(r)
				default:
					flush()
					return
				}
			}
		}
	}
}

func (m *Mirror) fail(err error) {
	m.errMu.Lock()
	if m.err == nil {
		m.err = err
	}
	m.errMu.Unlock()
}

func (m *Mirror) failed() bool {
	m.errMu.Lock()
	defer m.errMu.Unlock()
	return m.err != nil
}

// capture queues a copy of a frame (without its virtio-net header).
func (m *Mirror) capture(t time.Time, parts ...[]byte) {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	n -= netdev.HeaderSize
	if n <= 0 {
		return
	}
	data := make([]byte, 0, n)
	skip := netdev.HeaderSize
	for _, p := range parts {
		if skip >= len(p) {
			skip -= len(p)
			continue
		}
		data = append(data, p[skip:]...)
		skip = 0
	}
	select {
	case <-m.stop:
		m.dropped.Add(1)
		return
	default:
	}
	select {
	case m.q <- record{t, data}:
	default:
		m.dropped.Add(1)
	}
}

// WriteFrames forwards frames from the guest and mirrors those the
// back-end took.
func (m *Mirror) WriteFrames(frames [][][]byte) (int, error) {
	n, err := m.Inner.WriteFrames(frames)
	now := time.Now()
	for _, f := range frames[:n] {
		m.capture(now, f...)
	}
	return n, err
}

// ReadFrames forwards and mirrors frames to the guest.
func (m *Mirror) ReadFrames(bufs [][]byte, sizes []int) (int, error) {
	n, err := m.Inner.ReadFrames(bufs, sizes)
	now := time.Now()
	for i := range n {
		m.capture(now, bufs[i][:sizes[i]])
	}
	return n, err
}

// Close closes inner, writes out what is queued and closes the file.
func (m *Mirror) Close() error {
	err := netdev.ErrClosed
	m.once.Do(func() {
		err = m.Inner.Close()
		close(m.stop)
		<-m.done
		if m.f != nil {
			if cerr := m.f.Close(); cerr != nil {
				m.fail(cerr)
			}
		}
	})
	return err
}

// Stats returns the counters.
func (m *Mirror) Stats() Stats {
	s := Stats{Written: m.written.Load(), Dropped: m.dropped.Load()}
	m.errMu.Lock()
	if m.err != nil {
		s.Err = m.err.Error()
	}
	m.errMu.Unlock()
	return s
}
