package vhostuser

import (
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/viovmm/vio/memory"
)

// fakeBackend answers each request with reply(m); a nil reply sends
// nothing. It is a hostile peer for the front-end's checks; the real-peer
// test is TestQSDBlk.
func fakeBackend(t *testing.T, timeout time.Duration, reply func(m *Message) (Header, []byte, bool)) *Frontend {
	t.Helper()
	a, b := socketPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := NewConn(b)
		for {
			m, err := c.ReadMessage()
			if err != nil {
				return
			}
			m.Close()
			h, p, ok := reply(m)
			if !ok {
				continue
			}
			h.Flags |= Version
			if c.WriteMessage(h, p, nil) != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { a.Close(); b.Close(); <-done })
	return NewFrontend(a, timeout)
}

// honest answers like a minimal back-end offering everything implemented.
func honest(m *Message) (Header, []byte, bool) {
	r := Header{Request: m.Request, Flags: FlagReply}
	switch m.Request {
	case GetFeatures:
		return r, U64(FProtocolFeatures | 1<<32), true
	case GetProtocolFeatures:
		return r, U64(protocolFeaturesImplemented), true
	case GetQueueNum:
		return r, U64(2), true
	}
	if m.NeedReply() {
		return r, U64(0), true
	}
	return r, nil, false
}

func TestFrontendRefusesMismatchedReply(t *testing.T) {
	f := fakeBackend(t, time.Second, func(m *Message) (Header, []byte, bool) {
		return Header{Request: GetProtocolFeatures, Flags: FlagReply}, U64(0), true
	})
	if _, err := f.GetFeatures(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("reply to the wrong request: %v", err)
	}
	// The stream is out of step now: later calls fail without talking.
	if err := f.SetOwner(); err == nil {
		t.Fatal("call after a bad reply succeeded")
	}
}

func TestFrontendTimesOut(t *testing.T) {
	f := fakeBackend(t, 50*time.Millisecond, func(*Message) (Header, []byte, bool) { return Header{}, nil, false })
	start := time.Now()
	_, err := f.GetFeatures()
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent back-end: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestFrontendNegotiateAndAck(t *testing.T) {
	var fail atomic.Bool
	f := fakeBackend(t, time.Second, func(m *Message) (Header, []byte, bool) {
		if fail.Load() && m.Request == SetVringNum {
			if !m.NeedReply() {
				t.Error("SET_VRING_NUM without NEED_REPLY after REPLY_ACK was negotiated")
			}
			return Header{Request: m.Request, Flags: FlagReply}, U64(1), true
		}
		return honest(m)
	})
	feat, proto, err := f.Negotiate(1<<32|1<<33, ProtocolReplyAck|ProtocolMQ|ProtocolBackendReq)
	if err != nil {
		t.Fatal(err)
	}
	if feat != FProtocolFeatures|1<<32 || proto != ProtocolReplyAck|ProtocolMQ {
		t.Fatalf("features %#x protocol %#x", feat, proto)
	}
	if n, err := f.GetQueueNum(); err != nil || n != 2 {
		t.Fatalf("queues %d %v", n, err)
	}
	if _, err := f.GetConfig(0, 8); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("GET_CONFIG without CONFIG: %v", err)
	}
	if err := f.SetProtocolFeatures(ProtocolConfig | ProtocolMQ | ProtocolReplyAck); err != nil {
		t.Fatalf("offered protocol features refused: %v", err)
	}
	if err := f.SetFeatures(1 << 40); err == nil {
		t.Fatal("SET_FEATURES with a feature not offered succeeded")
	}
	fail.Store(true)
	if err := f.SetVringNum(0, 256); !errors.Is(err, ErrFailed) {
		t.Fatalf("non-zero REPLY_ACK: %v", err)
	}
	if err := f.SetVringNum(0, 100); err == nil {
		t.Fatal("queue size 100 accepted")
	}
}

func TestFrontendChecksReplies(t *testing.T) {
	f := fakeBackend(t, time.Second, func(m *Message) (Header, []byte, bool) {
		r := Header{Request: m.Request, Flags: FlagReply}
		switch m.Request {
		case GetConfig:
			return r, Config{Data: make([]byte, 4)}.Marshal(), true // asked 8
		case GetVringBase:
			return r, VringState{Index: 5, Num: 1}.Marshal(), true // asked 0
		}
		return honest(m)
	})
	if _, _, err := f.Negotiate(0, ProtocolConfig); err != nil {
		t.Fatal(err)
	}
	if _, err := f.GetConfig(0, 8); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short config reply: %v", err)
	}
	if _, err := f.GetVringBase(0); !errors.Is(err, ErrMalformed) {
		t.Fatalf("vring base for another queue: %v", err)
	}
}

func TestSetMemTableNeedsSharedMemory(t *testing.T) {
	f := fakeBackend(t, time.Second, honest)
	mem, err := memory.NewWithOptions([]memory.Layout{{GPA: 0, Size: 1 << 20}}, memory.Options{Backing: memory.Anonymous})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	err = f.SetMemTable(mem)
	if err == nil || !strings.Contains(err.Error(), "memfd") {
		t.Fatalf("anonymous RAM: %v", err)
	}
	if err := f.SetVringEnable(0, true); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("SET_VRING_ENABLE before protocol features: %v", err)
	}
}

// TestFrontendInflightReplies: GET_INFLIGHT_FD answered with an empty
// region is "no tracking" (fd -1); a region without its descriptor is a
// malformed reply; neither is asked for unless negotiated.
func TestFrontendInflightReplies(t *testing.T) {
	var size atomic.Uint64 // set by the test, read by the fake's goroutine
	f := fakeBackend(t, 5*time.Second, func(m *Message) (Header, []byte, bool) {
		if m.Request == GetInflightFD {
			return Header{Request: m.Request, Flags: FlagReply}, Inflight{MmapSize: size.Load(), NumQueues: 1, QueueSize: 8}.Marshal(), true
		}
		return honest(m)
	})
	if _, _, err := f.GetInflightFD(1, 8); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("GET_INFLIGHT_FD before negotiation: %v", err)
	}
	if _, p, err := f.Negotiate(0, ProtocolInflightShmfd); err != nil || p != ProtocolInflightShmfd {
		t.Fatalf("negotiated %#x (%v)", p, err)
	}
	if d, fd, err := f.GetInflightFD(1, 8); err != nil || fd != -1 || d.MmapSize != 0 {
		t.Fatalf("empty region: %+v fd %d (%v)", d, fd, err)
	}
	size.Store(4096)
	if _, fd, err := f.GetInflightFD(1, 8); !errors.Is(err, ErrMalformed) || fd != -1 {
		t.Fatalf("region without a descriptor: fd %d (%v)", fd, err)
	}
}
