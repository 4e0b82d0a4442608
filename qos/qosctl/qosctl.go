// Package qosctl is the operator's side of a QoS scheduler: the
// r=..,w=..,l=.. settings a command line gives, and a control socket
// that reports each client's statistics and changes its settings at run
// time, one JSON object a line:
//
//	{"op":"stats"}                                  every client
//	{"op":"stats","client":"vm1"}                   one client
//	{"op":"set","client":"vm1","limit":200}         change what is given
//	{"op":"set","client":"vm1","reservation":100,"weight":2,"limit":0}
//
// Each request gets one line back: {"clients":[...]} with the clients'
// settings and statistics after the request, or {"error":"..."}. The
// socket is the operator's (mode 0600), but what arrives on it is still
// checked: a line is at most MaxLine bytes and a bad one gets an error
// reply, never a crash.
package qosctl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/viovmm/vio/qos/mclock"
)

// Controller is what the control socket drives: a scheduler's clients,
// by name. Its methods must be safe for concurrent use. block/qos.Shared
// implements it.
type Controller interface {
	// Clients returns the clients' names, in a stable order.
	Clients() []string
	Params(name string) (mclock.Params, error)
	Stats(name string) (mclock.Stats, error)
	// SetClient changes a client's settings; it fails for invalid ones.
	SetClient(name string, p mclock.Params) error
}

// ParseParams reads "r=IOPS,w=N,l=IOPS" (also reservation=, weight=,
// limit=; any subset, in any order) over base: the keys given replace
// base's values. The result is validated.
func ParseParams(spec string, base mclock.Params) (mclock.Params, error) {
	p := base
	if strings.TrimSpace(spec) == "" {
		return p, p.Validate()
	}
	for _, kv := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return p, fmt.Errorf("QoS setting %q: want key=value with r (reservation, IOPS), w (weight) or l (limit, IOPS), e.g. r=100,w=2,l=500", kv)
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return p, fmt.Errorf("QoS setting %s=%s: %q is not a number", k, v, v)
		}
		switch strings.TrimSpace(k) {
		case "r", "reservation":
			p.Reservation = f
		case "w", "weight":
			p.Weight = f
		case "l", "limit":
			p.Limit = f
		default:
			return p, fmt.Errorf("QoS setting %q: unknown key %q; use r (reservation, IOPS), w (weight) or l (limit, IOPS)", kv, k)
		}
	}
	return p, p.Validate()
}

// MaxLine bounds a request line.
const MaxLine = 4096

// maxConns bounds the control connections served at once; more wait.
const maxConns = 8

// Request is one line a control client sends.
type Request struct {
	Op     string `json:"op"`               // "stats" or "set"
	Client string `json:"client,omitempty"` // "" with stats: every client
	// With set: the settings to change (absent ones are kept).
	Reservation *float64 `json:"reservation,omitempty"`
	Weight      *float64 `json:"weight,omitempty"`
	Limit       *float64 `json:"limit,omitempty"`
}

// Reply is the line a control client gets back.
type Reply struct {
	Clients []Client `json:"clients,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// Client is one client's settings and statistics. Rates are in the
// scheduler's cost units a second (IOPS with the default cost model).
type Client struct {
	Name        string  `json:"name"`
	Reservation float64 `json:"reservation"`
	Weight      float64 `json:"weight"`
	Limit       float64 `json:"limit"`
	Queued      int     `json:"queued"`
	Requests    uint64  `json:"requests"`
	// ReservationRequests were served because the client was owed its
	// reservation, WeightRequests from spare capacity.
	ReservationRequests uint64 `json:"reservation_requests"`
	WeightRequests      uint64 `json:"weight_requests"`
	Rejected            uint64 `json:"rejected"`
	// Rate is the rate over the last whole second, AvgRate since the
	// client was added.
	Rate    float64 `json:"rate"`
	AvgRate float64 `json:"avg_rate"`
	// ThrottledMs is the time only the client's limit held it back.
	ThrottledMs float64 `json:"throttled_ms"`
	// Latency is the time requests waited in the scheduler, in ms.
	Latency Latency `json:"latency_ms"`
}

// Latency percentiles in milliseconds.
type Latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func clientOf(name string, st mclock.Stats) Client {
	return Client{
		Name: name, Reservation: st.Params.Reservation, Weight: st.Params.Weight, Limit: st.Params.Limit,
		Queued: st.Queued, Requests: st.Requests,
		ReservationRequests: st.ReservationRequests, WeightRequests: st.WeightRequests, Rejected: st.Rejected,
		Rate: st.Rate, AvgRate: st.AvgRate, ThrottledMs: ms(st.Throttled),
		Latency: Latency{P50: ms(st.Latency.P50), P90: ms(st.Latency.P90), P99: ms(st.Latency.P99), P999: ms(st.Latency.P999), Max: ms(st.Latency.Max)},
	}
}

// Handle runs one request line against c and returns the reply line
// (without its newline).
func Handle(c Controller, line []byte) []byte {
	r := handle(c, line)
	out, err := json.Marshal(r)
	if err != nil { // a NaN rate cannot come from a valid scheduler, but never send nothing
		out, _ = json.Marshal(Reply{Error: "encoding the reply: " + err.Error()})
	}
	return out
}

func handle(c Controller, line []byte) Reply {
	var req Request
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return Reply{Error: fmt.Sprintf("bad request (%v); send one JSON object a line, e.g. {\"op\":\"stats\"} or {\"op\":\"set\",\"client\":\"vm1\",\"limit\":200}", err)}
	}
	names := c.Clients()
	known := func(n string) bool {
		for _, m := range names {
			if m == n {
				return true
			}
		}
		return false
	}
	if req.Client != "" && !known(req.Client) {
		return Reply{Error: fmt.Sprintf("no client %q; the clients are %s", req.Client, strings.Join(names, ", "))}
	}
	switch req.Op {
	case "stats":
		if req.Reservation != nil || req.Weight != nil || req.Limit != nil {
			return Reply{Error: "stats takes no settings; use op set to change them"}
		}
	case "set":
		if req.Client == "" {
			return Reply{Error: "set needs a client, e.g. {\"op\":\"set\",\"client\":\"vm1\",\"limit\":200}"}
		}
		p, err := c.Params(req.Client)
		if err != nil {
			return Reply{Error: err.Error()}
		}
		if req.Reservation != nil {
			p.Reservation = *req.Reservation
		}
		if req.Weight != nil {
			p.Weight = *req.Weight
		}
		if req.Limit != nil {
			p.Limit = *req.Limit
		}
		if err := c.SetClient(req.Client, p); err != nil {
			return Reply{Error: err.Error()}
		}
	default:
		return Reply{Error: fmt.Sprintf("unknown op %q; use stats or set", req.Op)}
	}
	if req.Client != "" {
		names = []string{req.Client}
	}
	out := Reply{Clients: []Client{}}
	for _, n := range names {
		st, err := c.Stats(n)
		if err != nil {
			continue // removed meanwhile
		}
		out.Clients = append(out.Clients, clientOf(n, st))
	}
	return out
}

// Serve answers control connections on l until ctx ends, then closes l
// and the connections and returns nil.
func Serve(ctx context.Context, l net.Listener, c Controller) error {
	var wg sync.WaitGroup
	slots := make(chan struct{}, maxConns)
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	stop := context.AfterFunc(ctx, func() {
		l.Close()
		mu.Lock()
		for cn := range conns {
			cn.Close()
		}
		mu.Unlock()
	})
	defer stop()
	defer wg.Wait()
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		cn, err := l.Accept()
		if err != nil {
			<-slots
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			continue // a transient accept error (EMFILE...): keep serving
		}
		mu.Lock()
		conns[cn] = struct{}{}
		mu.Unlock()
		if ctx.Err() != nil {
			cn.Close()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			serveConn(cn, c)
			mu.Lock()
			delete(conns, cn)
			mu.Unlock()
			cn.Close()
		}()
	}
}

// serveConn answers lines until the peer closes or sends a line too long.
func serveConn(cn net.Conn, c Controller) {
	sc := bufio.NewScanner(cn)
	sc.Buffer(make([]byte, 0, 512), MaxLine)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		if _, err := cn.Write(append(Handle(c, line), '\n')); err != nil {
			return
		}
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		msg, _ := json.Marshal(Reply{Error: fmt.Sprintf("request longer than %d bytes", MaxLine)})
		cn.Write(append(msg, '\n'))
	}
}
