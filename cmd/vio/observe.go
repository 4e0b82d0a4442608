package main

import (
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/metrics"
)

// observeFlags are the flags of `vio run` and `vio serve` that let the
// world watch the VM: the event monitor and the metrics endpoint.
type observeFlags struct {
	eventMonitor string
	metrics      string
}

func (o *observeFlags) add(fl *pflag.FlagSet) {
	fl.StringVar(&o.eventMonitor, "event-monitor", "", "write events as JSON lines: path=FILE or fd=N (Cloud Hypervisor's form; see docs/api.md)")
	fl.StringVar(&o.metrics, "metrics", "", "serve Prometheus metrics on /metrics at ADDR (host:port) or unix:PATH (see docs/api.md)")
}

// start opens what the flags ask for, publishing on mon and reading src
// for metrics. stop publishes vmm shutdown, then closes them; call it
// after the VM is gone so its last events are written.
func (o observeFlags) start(src metrics.Source, mon *events.Monitor, log *slog.Logger) (_ func(), err error) {
	var stops []func()
	stop := func() {
		mon.Publish(events.SourceVMM, "shutdown")
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	if o.eventMonitor != "" {
		t, err := events.ParseTarget(o.eventMonitor)
		if err != nil {
			return nil, err
		}
		f, err := t.Open()
		if err != nil {
			return nil, err
		}
		sink := events.NewSink(mon, f, 0)
		stops = append(stops, func() {
			if err := sink.Close(2 * time.Second); err != nil {
				log.Warn(err.Error())
			}
			f.Close()
		})
	}
	if o.metrics != "" {
		l, err := metrics.Listen(o.metrics, log)
		if err != nil {
			return nil, err
		}
		srv := metrics.NewServer(metrics.NewRegistry(src, mon), log)
		go func() {
			if err := srv.Serve(l); err != nil {
				log.Error("metrics endpoint", "err", err)
			}
		}()
		stops = append(stops, func() { srv.Close() })
		log.Info("serving metrics", "addr", o.metrics)
	}
	mon.Publish(events.SourceVMM, "starting")
	return stop, nil
}
