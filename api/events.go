package api

import (
	"encoding/json"
	"net/http"

	"github.com/viovmm/vio/events"
)

// EventsEndpoint is vio's own streaming endpoint (Cloud Hypervisor has
// none; its events go only to --event-monitor): GET it and the answer is
// the event stream as JSON lines, one per event, for as long as the
// client reads.
const EventsEndpoint = "vio.events"

// SetEvents makes the server stream m's events on EventsEndpoint. Call it
// before Serve. Each client gets its own bounded buffer: a client that
// does not read loses events (and is told with an events-dropped event),
// it never slows the VMM.
func (s *Server) SetEvents(m *events.Monitor) {
	s.ev = m
	s.evQuit = make(chan struct{})
	// Shutdown waits for handlers; a stream would otherwise hold it for
	// its whole timeout.
	s.http.RegisterOnShutdown(func() { close(s.evQuit) })
}

// streamEvents answers EventsEndpoint.
func (s *Server) streamEvents(w http.ResponseWriter, r *http.Request) error {
	if s.ev == nil {
		return errorf(http.StatusNotFound, "this vio has no event monitor")
	}
	sub := s.ev.Subscribe(0)
	defer sub.Close()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// The header goes out now, so the client knows it is subscribed.
	if err := rc.Flush(); err != nil {
		return nil
	}
	enc := json.NewEncoder(w)
	for {
		select {
		case e := <-sub.Events():
			if enc.Encode(e) != nil || rc.Flush() != nil {
				return nil // the client went away
			}
		case <-r.Context().Done():
			return nil
		case <-s.evQuit:
			return nil
		}
	}
}
