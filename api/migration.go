package api

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/viovmm/vio/vmm"
)

// The migration endpoints join the routes here, which keeps server.go's
// table as it was.
func init() {
	routes["vm.send-migration"] = route{http.MethodPut, (*Server).sendMigration}
	routes["vm.receive-migration"] = route{http.MethodPut, (*Server).receiveMigration}
}

// sendMigrationRequest is Cloud Hypervisor's SendMigrationData.
type sendMigrationRequest struct {
	DestinationURL  string `json:"destination_url"`
	Local           bool   `json:"local"`
	DowntimeMS      *int64 `json:"downtime_ms"`
	TimeoutS        *int64 `json:"timeout_s"`
	TimeoutStrategy string `json:"timeout_strategy"`
	Connections     *int64 `json:"connections"`
	TLSDir          string `json:"tls_dir"`
	MemoryMode      string `json:"memory_mode"`
}

// sendMigration migrates the VM (docs/migration.md); the answer comes
// when the migration has ended.
func (s *Server) sendMigration(w http.ResponseWriter, r *http.Request) error {
	var req sendMigrationRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	// local (the memfd passed, not copied) is checked by the Controller,
	// which knows the URL's kind and whether guest RAM is shared.
	sm := vmm.SendMigration{DestinationURL: req.DestinationURL, TLSDir: req.TLSDir, Local: req.Local}
	switch {
	case req.DestinationURL == "":
		return errorf(http.StatusBadRequest, "vm.send-migration needs destination_url: tcp:HOST:PORT or unix:/path, where vm.receive-migration waits")
	case req.Connections != nil && (*req.Connections < 1 || *req.Connections > 128):
		return errorf(http.StatusBadRequest, "connections %d: want 1 to 128", *req.Connections)
	case req.Connections != nil && *req.Connections != 1:
		return errorf(http.StatusNotImplemented, "vio migrates over one connection; leave out connections or send 1")
	case req.MemoryMode != "" && req.MemoryMode != "Precopy":
		return errorf(http.StatusNotImplemented, "memory_mode %q: vio migrates by Precopy only", req.MemoryMode)
	case req.DowntimeMS != nil && *req.DowntimeMS < 1:
		return errorf(http.StatusBadRequest, "downtime_ms %d: want at least 1", *req.DowntimeMS)
	case req.TimeoutS != nil && *req.TimeoutS < 1:
		return errorf(http.StatusBadRequest, "timeout_s %d: want at least 1", *req.TimeoutS)
	}
	if req.DowntimeMS != nil {
		sm.Downtime = time.Duration(min(*req.DowntimeMS, 1<<40)) * time.Millisecond
	}
	if req.TimeoutS != nil {
		sm.Timeout = time.Duration(min(*req.TimeoutS, 1<<30)) * time.Second
	}
	switch req.TimeoutStrategy {
	case "", "Cancel":
	case "Ignore":
		sm.IgnoreTimeout = true
	default:
		return errorf(http.StatusBadRequest, "timeout_strategy %q: want Cancel or Ignore", req.TimeoutStrategy)
	}
	if err := s.ctl.SendMigration(r.Context(), sm); err != nil {
		return err
	}
	noContent(w)
	return nil
}

// receiveMigrationRequest is Cloud Hypervisor's ReceiveMigrationData.
type receiveMigrationRequest struct {
	ReceiverURL string            `json:"receiver_url"`
	TLSDir      string            `json:"tls_dir"`
	MemoryMode  string            `json:"memory_mode"`
	ZoneUpdates []json.RawMessage `json:"zone_updates"`
}

// receiveMigration waits for one migration and answers once the VM runs.
func (s *Server) receiveMigration(w http.ResponseWriter, r *http.Request) error {
	var req receiveMigrationRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	switch {
	case req.ReceiverURL == "":
		return errorf(http.StatusBadRequest, "vm.receive-migration needs receiver_url: tcp:HOST:PORT or unix:/path to wait on")
	case req.MemoryMode != "" && req.MemoryMode != "Precopy":
		return errorf(http.StatusNotImplemented, "memory_mode %q: vio migrates by Precopy only", req.MemoryMode)
	case len(req.ZoneUpdates) > 0:
		return errorf(http.StatusNotImplemented, "vm.receive-migration cannot apply zone_updates: vio has no memory zones; leave it out")
	}
	if err := s.ctl.ReceiveMigration(r.Context(), vmm.ReceiveMigration{ReceiverURL: req.ReceiverURL, TLSDir: req.TLSDir}); err != nil {
		return err
	}
	noContent(w)
	return nil
}
