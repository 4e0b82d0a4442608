package api

import (
	"bytes"
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
	// CopyDisks (a vio extension) is true (every writable disk with a
	// path) or a list of disk ids: disks not on shared storage, copied
	// into the destination's own images (docs/migration.md).
	CopyDisks json.RawMessage `json:"copy_disks"`
	// UnplugTimeoutS (a vio extension) bounds how long the source waits
	// for the guest to release its failover primaries (docs/failover.md).
	UnplugTimeoutS *int64 `json:"unplug_timeout_s"`
}

// parseCopyDisks reads copy_disks: true, false, null or a list of ids.
func parseCopyDisks(raw json.RawMessage) (ids []string, all bool, err error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || string(t) == "null" || string(t) == "false" {
		return nil, false, nil
	}
	if string(t) == "true" {
		return nil, true, nil
	}
	if err := json.Unmarshal(t, &ids); err != nil || len(ids) == 0 {
		return nil, false, errorf(http.StatusBadRequest, "copy_disks: give true (every writable disk) or a non-empty list of disk ids, such as [\"disk0\"]")
	}
	for _, id := range ids {
		if id == "" {
			return nil, false, errorf(http.StatusBadRequest, "copy_disks: a disk id is empty")
		}
	}
	return ids, false, nil
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
	var err error
	if sm.CopyDisks, sm.CopyAllDisks, err = parseCopyDisks(req.CopyDisks); err != nil {
		return err
	}
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
	case req.UnplugTimeoutS != nil && (*req.UnplugTimeoutS < 1 || *req.UnplugTimeoutS > 3600):
		return errorf(http.StatusBadRequest, "unplug_timeout_s %d: want 1 to 3600 seconds", *req.UnplugTimeoutS)
	}
	if req.UnplugTimeoutS != nil {
		sm.UnplugWait = time.Duration(*req.UnplugTimeoutS) * time.Second
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
	// DiskPaths (a vio extension) gives disks the source copies paths
	// here other than their config's: disk id to path.
	DiskPaths map[string]string `json:"disk_paths"`
	// DevicePaths (a vio extension) gives failover primaries the host
	// device to plug here: device id to sysfs path, or "none" to leave
	// one out (docs/failover.md).
	DevicePaths map[string]string `json:"device_paths"`
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
	for id, p := range req.DiskPaths {
		if id == "" || p == "" {
			return errorf(http.StatusBadRequest, "disk_paths maps disk ids to paths on this host, such as {\"disk0\": \"/var/lib/vio/disk0.raw\"}; an id or a path is empty")
		}
	}
	for id, p := range req.DevicePaths {
		if id == "" || p == "" {
			return errorf(http.StatusBadRequest, "device_paths maps failover primaries' ids to host devices here, such as {\"vf0\": \"/sys/bus/pci/devices/0000:03:00.2\"} (or \"none\"); an id or a path is empty")
		}
	}
	if err := s.ctl.ReceiveMigration(r.Context(), vmm.ReceiveMigration{ReceiverURL: req.ReceiverURL, TLSDir: req.TLSDir, DiskPaths: req.DiskPaths, DevicePaths: req.DevicePaths}); err != nil {
		return err
	}
	noContent(w)
	return nil
}
