package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/events"
)

// Path is where the endpoint answers.
const Path = "/metrics"

// ErrAddr is a --metrics value vio cannot use.
var ErrAddr = errors.New("bad --metrics")

// NewRegistry returns a registry with vio's collector for src and ev, and
// the Go runtime's and the process's (RSS, CPU, descriptors).
func NewRegistry(src Source, ev *events.Monitor) *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(NewCollector(src, ev),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Listen opens the endpoint's socket: "unix:PATH" is a UNIX socket made
// like the API's (mode 0600, same user only; see api.Listen), anything
// else a TCP host:port.
func Listen(addr string, log *slog.Logger) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" {
			return nil, fmt.Errorf("%w %q: name the socket, e.g. unix:/run/vio-metrics.sock", ErrAddr, addr)
		}
		l, err := api.Listen(path, log)
		if err != nil {
			return nil, err
		}
		return l, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("%w %q: want host:port (e.g. 127.0.0.1:9100) or unix:PATH", ErrAddr, addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAddr, err)
	}
	return l, nil
}

// Server serves a registry on Path.
type Server struct {
	http *http.Server
}

// NewServer returns a Server for g. Errors collecting are logged and the
// rest of the metrics still served.
func NewServer(g prometheus.Gatherer, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.Handle(Path, promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	return &Server{http: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}}
}

// Serve answers scrapes on l until Close.
func (s *Server) Serve(l net.Listener) error {
	if err := s.http.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Close stops serving; a scrape in progress gets up to a second.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.http.Shutdown(ctx); err != nil {
		return s.http.Close()
	}
	return nil
}
