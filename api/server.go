// Package api serves the Cloud-Hypervisor-compatible REST API that Kata
// Containers' clh driver (and curl) use to drive a VMM: HTTP/1.1 on a UNIX
// socket, routes under /api/v1/, JSON bodies in Cloud Hypervisor's shapes
// (api/testdata/cloud-hypervisor.yaml). It does HTTP only; the VM's
// lifecycle is vmm.Controller's.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/block/journal"
	"github.com/viovmm/vio/block/mirror"
	"github.com/viovmm/vio/block/multipath"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/vmm"
)

// Controller is what the API drives: vmm.Controller, whose documentation
// holds the contract (states, errors). Errors are matched with errors.Is
// against vmm.ErrNotCreated (404), vmm.ErrWrongState (405, as Cloud
// Hypervisor's description says for an action the state does not allow),
// vmm.ErrInvalidConfig, vmm.ErrSnapshotRequest and
// vmm.ErrMigrationRequest (400),
// vmm.ErrNoDevice (404), vmm.ErrDuplicateID (409), vmm.ErrNotReleased
// (504: the guest did not release a device in time), and
// vmm.ErrNotImplemented and vmm.ErrNotSaveable (501); any other
// error is a 500. The error's text is the sentence the client sees.
type Controller interface {
	Create(*config.VM) error
	Boot() error
	Pause() error
	Resume() error
	Shutdown() error
	Reboot() error
	PowerButton() error
	Delete() error
	Info() (vmm.Info, error)
	Counters() (map[string]map[string]int64, error)
	// AddDisk and AddNet return nil info for a device added to the
	// config only (before boot), the device's id and address for one
	// hot-plugged. AddNet owns the Net's TapFDs from the call on.
	AddDisk(config.Disk) (*vmm.DeviceInfo, error)
	AddNet(config.Net) (*vmm.DeviceInfo, error)
	AddVsock(config.Vsock) (*vmm.DeviceInfo, error)
	// AddDevice passes a host PCI device through (VFIO), cold or hot
	// as AddDisk.
	AddDevice(config.Device) (*vmm.DeviceInfo, error)
	RemoveDevice(id string) error
	Snapshot(destinationURL string) error
	Restore(sourceURL string, ro vmm.RestoreOptions) error
	Resize(vmm.Resize) error
	ResizeDisk(id string, size int64) error
	SetDiskFaults(node string, rules []graph.FaultRule) error
	SetDiskThrottle(node string, c graph.RateLimiterConfig) error
	DiskMirror(req vmm.MirrorRequest) (mirror.Status, error)
	DiskJournal(node string, r journal.Request) (journal.Status, error)
	DiskMultipath(node string) (multipath.Status, error)
	// SendMigration and ReceiveMigration block until the migration has
	// ended; ctx (the request's) cancels them.
	SendMigration(ctx context.Context, req vmm.SendMigration) error
	ReceiveMigration(ctx context.Context, req vmm.ReceiveMigration) error
}

var _ Controller = (*vmm.Controller)(nil)

// Version is what vmm.ping reports, "<name> v<semver>" as Cloud Hypervisor
// spells it. Set at link time with -X.
var Version = "vio v0.1.0"

// MaxBody bounds a request body. A VmConfig is a few kilobytes.
const MaxBody = 1 << 20

const maxHeader = 16 << 10

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// Server serves the API for one Controller.
type Server struct {
	ctl  Controller
	log  *slog.Logger
	http *http.Server

	shutdownOnce sync.Once
	done         chan struct{} // closed when vmm.shutdown was asked

	closeOnce sync.Once
	closed    chan struct{} // closed when Close has finished
	closeErr  error

	ev     *events.Monitor // nil: no event stream (see SetEvents)
	evQuit chan struct{}   // closed when the server shuts down
}

// NewServer returns a Server for ctl. A nil log discards.
func NewServer(ctl Controller, log *slog.Logger) *Server {
	if log == nil {
		log = discard
	}
	s := &Server{ctl: ctl, log: log, done: make(chan struct{}), closed: make(chan struct{})}
	s.http = &http.Server{
		Handler:           s,
		ConnContext:       connContext,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    maxHeader,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s
}

// Serve answers requests on l until Close or vmm.shutdown; then, once the
// answers in progress have gone out, it returns nil. l should be a
// *Listener (for SCM_RIGHTS and peer checks).
func (s *Server) Serve(l net.Listener) error {
	err := s.http.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		<-s.closed
		return nil
	}
	return err
}

// ShutdownRequested is closed once a client has asked for vmm.shutdown
// (after its answer went out).
func (s *Server) ShutdownRequested() <-chan struct{} { return s.done }

// Close stops serving: the listener is closed, idle connections are
// closed, and requests in progress get up to 3 s to finish.
// Close may be called more than once; every call returns when the first
// has finished.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		s.closeErr = s.http.Shutdown(ctx)
		if errors.Is(s.closeErr, context.DeadlineExceeded) {
			s.closeErr = s.http.Close()
		}
		close(s.closed)
	})
	<-s.closed
	return s.closeErr
}

// route is one endpoint.
type route struct {
	method string
	handle func(s *Server, w http.ResponseWriter, r *http.Request) error
}

const prefix = "/api/v1/"

var routes = map[string]route{
	"vmm.ping":           {http.MethodGet, (*Server).ping},
	"vmm.shutdown":       {http.MethodPut, (*Server).shutdownVMM},
	"vm.create":          {http.MethodPut, (*Server).create},
	"vm.boot":            {http.MethodPut, action((Controller).Boot)},
	"vm.pause":           {http.MethodPut, action((Controller).Pause)},
	"vm.resume":          {http.MethodPut, action((Controller).Resume)},
	"vm.shutdown":        {http.MethodPut, action((Controller).Shutdown)},
	"vm.reboot":          {http.MethodPut, action((Controller).Reboot)},
	"vm.power-button":    {http.MethodPut, action((Controller).PowerButton)},
	"vm.delete":          {http.MethodPut, action((Controller).Delete)},
	"vm.info":            {http.MethodGet, (*Server).info},
	"vm.counters":        {http.MethodGet, (*Server).counters},
	"vm.add-disk":        {http.MethodPut, (*Server).addDisk},
	"vm.add-net":         {http.MethodPut, (*Server).addNet},
	"vm.add-vsock":       {http.MethodPut, (*Server).addVsock},
	"vm.add-device":      {http.MethodPut, (*Server).addDevice},
	"vm.remove-device":   {http.MethodPut, (*Server).removeDevice},
	"vm.snapshot":        {http.MethodPut, (*Server).snapshot},
	"vm.restore":         {http.MethodPut, (*Server).restore},
	"vm.resize":          {http.MethodPut, (*Server).resize},
	"vm.resize-disk":     {http.MethodPut, (*Server).resizeDisk},
	EventsEndpoint:       {http.MethodGet, (*Server).streamEvents},
	"vio.disk-faults":    {http.MethodPut, (*Server).diskFaults},
	"vio.disk-throttle":  {http.MethodPut, (*Server).diskThrottle},
	"vio.disk-mirror":    {http.MethodPut, (*Server).diskMirror},
	"vio.disk-journal":   {http.MethodPut, (*Server).diskJournal},
	"vio.disk-multipath": {http.MethodPut, (*Server).diskMultipath},
}

// notYet are the other endpoints of Cloud Hypervisor's API: known, so
// they get a 501 that says so rather than a 404.
var notYet = map[string]bool{
	"vm.resize-zone": true,
	"vm.add-fs":      true, "vm.add-generic-vhost-user": true,
	"vm.add-pmem": true, "vm.add-vdpa": true, "vm.add-user-device": true,
	"vm.coredump": true, "vm.nmi": true,
}

// httpError is an error with the status to answer it with.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func errorf(status int, format string, a ...any) error {
	return &httpError{status: status, msg: fmt.Sprintf(format, a...)}
}

// ServeHTTP routes a request and turns its error into a JSON answer.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name, ok := cutPrefix(r.URL.Path)
	rt, known := routes[name]
	var err error
	switch {
	case !ok || !known && !notYet[name]:
		err = errorf(http.StatusNotFound, "no such endpoint %s: the API lives under %s (e.g. %svm.info)", r.URL.Path, prefix, prefix)
	case !known:
		err = errorf(http.StatusNotImplemented, "%s is not implemented by vio yet", name)
	case r.Method != rt.method:
		w.Header().Set("Allow", rt.method)
		err = errorf(http.StatusMethodNotAllowed, "%s takes %s, not %s", name, rt.method, r.Method)
	default:
		err = rt.handle(s, w, r)
	}
	if err != nil {
		s.fail(w, r, err)
	}
}

func cutPrefix(p string) (string, bool) {
	if len(p) <= len(prefix) || p[:len(prefix)] != prefix {
		return "", false
	}
	return p[len(prefix):], true
}

// fail answers err with its status and {"error": sentence}.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	var he *httpError
	switch {
	case errors.As(err, &he):
		status = he.status
	case errors.Is(err, vmm.ErrNotCreated), errors.Is(err, vmm.ErrNoDevice), errors.Is(err, vmm.ErrNoNode):
		status = http.StatusNotFound
	case errors.Is(err, vmm.ErrDuplicateID):
		status = http.StatusConflict
	case errors.Is(err, vmm.ErrNotReleased):
		status = http.StatusGatewayTimeout
	case errors.Is(err, vmm.ErrWrongState):
		status = http.StatusMethodNotAllowed
	case errors.Is(err, vmm.ErrInvalidConfig), errors.Is(err, vmm.ErrSnapshotRequest), errors.Is(err, vmm.ErrMigrationRequest):
		status = http.StatusBadRequest
	case errors.Is(err, vmm.ErrNotImplemented), errors.Is(err, vmm.ErrNotSaveable):
		status = http.StatusNotImplemented
	}
	level := slog.LevelInfo
	if status >= 500 {
		level = slog.LevelError
	}
	s.log.Log(r.Context(), level, "API request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	writeJSON(w, status, struct {
		Error string `json:"error"`
	}{err.Error()})
}

// writeJSON answers with v as JSON, with its length, so that clients
// can keep the connection for the next request.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"the answer could not be encoded"}`)
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

func noContent(w http.ResponseWriter) { w.WriteHeader(http.StatusNoContent) }

// readBody reads a bounded request body.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, errorf(http.StatusRequestEntityTooLarge, "the request body is larger than %d bytes", MaxBody)
	}
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, errorf(http.StatusBadRequest, "%s needs a JSON body", r.URL.Path[len(prefix):])
	}
	return b, nil
}

// decode reads one JSON object into v, refusing unknown fields.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	b, err := readBody(w, r)
	if err != nil {
		return err
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return errorf(http.StatusBadRequest, "%v", config.DecodeError(err))
	}
	if d.More() {
		return errorf(http.StatusBadRequest, "the JSON object is followed by more data: send exactly one object")
	}
	return nil
}

// action adapts a body-less Controller operation answered with 204.
func action(op func(Controller) error) func(*Server, http.ResponseWriter, *http.Request) error {
	return func(s *Server, w http.ResponseWriter, r *http.Request) error {
		if err := op(s.ctl); err != nil {
			return err
		}
		noContent(w)
		return nil
	}
}

type pingResponse struct {
	BuildVersion string   `json:"build_version,omitempty"`
	Version      string   `json:"version"`
	PID          int      `json:"pid"`
	Features     []string `json:"features"`
}

func (s *Server) ping(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, pingResponse{Version: Version, PID: os.Getpid(), Features: []string{}})
	return nil
}

// shutdownVMM stops the VM, answers 204, then ends the server: the
// process exits after that (Kata waits for it to be gone).
func (s *Server) shutdownVMM(w http.ResponseWriter, r *http.Request) error {
	if err := s.ctl.Delete(); err != nil {
		return err
	}
	noContent(w)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	s.shutdownOnce.Do(func() {
		close(s.done)
		go s.Close() // waits for this handler to return
	})
	return nil
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) error {
	b, err := readBody(w, r)
	if err != nil {
		return err
	}
	cfg, err := config.Decode(b)
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	if err := s.ctl.Create(cfg); err != nil {
		return err
	}
	noContent(w)
	return nil
}

type infoResponse struct {
	Config           *config.VM `json:"config"`
	State            vmm.State  `json:"state"`
	MemoryActualSize int64      `json:"memory_actual_size"`
}

func (s *Server) info(w http.ResponseWriter, r *http.Request) error {
	info, err := s.ctl.Info()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, infoResponse{Config: info.Config, State: info.State, MemoryActualSize: info.Config.Memory.Size})
	return nil
}

func (s *Server) counters(w http.ResponseWriter, r *http.Request) error {
	c, err := s.ctl.Counters()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, c)
	return nil
}

func (s *Server) addDisk(w http.ResponseWriter, r *http.Request) error {
	var d config.Disk
	if err := decode(w, r, &d); err != nil {
		return err
	}
	info, err := s.ctl.AddDisk(d)
	if err != nil {
		return err
	}
	added(w, info)
	return nil
}

func (s *Server) addVsock(w http.ResponseWriter, r *http.Request) error {
	var vs config.Vsock
	if err := decode(w, r, &vs); err != nil {
		return err
	}
	info, err := s.ctl.AddVsock(vs)
	if err != nil {
		return err
	}
	added(w, info)
	return nil
}

// addDevice passes a host PCI device through: Cloud Hypervisor's
// DeviceConfig, {"path": "/sys/bus/pci/devices/BDF", "id": ...}, with
// vio's failover (the standby NIC's id) for a failover primary.
func (s *Server) addDevice(w http.ResponseWriter, r *http.Request) error {
	var d config.Device
	if err := decode(w, r, &d); err != nil {
		return err
	}
	if d.Path == "" {
		return errorf(http.StatusBadRequest, "vm.add-device needs path, the device's sysfs directory such as /sys/bus/pci/devices/0000:00:04.0")
	}
	d.Path = strings.TrimSuffix(d.Path, "/")
	info, err := s.ctl.AddDevice(d)
	if err != nil {
		return err
	}
	added(w, info)
	return nil
}

// added answers an add: 200 with Cloud Hypervisor's PciDeviceInfo for a
// hot-plugged device, 204 for one only added to the config.
func added(w http.ResponseWriter, info *vmm.DeviceInfo) {
	if info == nil {
		noContent(w)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

// addNet takes a NIC by TAP name, or on the TAP descriptors the client
// passed with SCM_RIGHTS on this connection (see FDConn), one per queue
// pair, as Kata's clh driver does. Descriptors go to the Controller with
// the NIC; a request refused before that closes them.
func (s *Server) addNet(w http.ResponseWriter, r *http.Request) error {
	fds, fdErr := RequestFDs(r.Context())
	handed := false
	defer func() {
		if !handed {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}()
	var n config.Net
	if err := decode(w, r, &n); err != nil {
		return err
	}
	if fdErr != nil {
		return errorf(http.StatusBadRequest, "%v", fdErr)
	}
	if len(fds) > 0 && n.NumQueues != 0 && n.NumQueues != 2*len(fds) {
		return errorf(http.StatusBadRequest, "num_queues %d does not match the %d TAP descriptor(s) passed, one per queue pair: send num_queues %d or leave it out", n.NumQueues, len(fds), 2*len(fds))
	}
	if len(fds) > 0 && n.NumQueues == 0 {
		n.NumQueues = 2 * len(fds) // so that the pair count is validated with the rest
	}
	n.TapFDs, handed = fds, true
	info, err := s.ctl.AddNet(n)
	if err != nil {
		return err
	}
	added(w, info)
	return nil
}

// removeDeviceRequest is Cloud Hypervisor's VmRemoveDevice.
type removeDeviceRequest struct {
	ID string `json:"id"`
}

func (s *Server) removeDevice(w http.ResponseWriter, r *http.Request) error {
	var req removeDeviceRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.ID == "" {
		return errorf(http.StatusBadRequest, "vm.remove-device needs the id of a disk, NIC or pass-through device (vm.info lists them)")
	}
	if err := s.ctl.RemoveDevice(req.ID); err != nil {
		return err
	}
	noContent(w)
	return nil
}

// snapshotRequest is Cloud Hypervisor's VmSnapshotConfig.
type snapshotRequest struct {
	DestinationURL string `json:"destination_url"`
}

func (s *Server) snapshot(w http.ResponseWriter, r *http.Request) error {
	var req snapshotRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.DestinationURL == "" {
		return errorf(http.StatusBadRequest, "vm.snapshot needs destination_url, a file:///path URL of a new or empty directory")
	}
	if err := s.ctl.Snapshot(req.DestinationURL); err != nil {
		return err
	}
	noContent(w)
	return nil
}

// restoreRequest is Cloud Hypervisor's RestoreConfig. memory_restore_mode
// Copy is prefault; OnDemand (the lazy mapping) is vio's default anyway.
type restoreRequest struct {
	SourceURL         string            `json:"source_url"`
	Prefault          bool              `json:"prefault"`
	MemoryRestoreMode string            `json:"memory_restore_mode"`
	Resume            bool              `json:"resume"`
	ZoneUpdates       []json.RawMessage `json:"zone_updates"`
}

func (s *Server) restore(w http.ResponseWriter, r *http.Request) error {
	var req restoreRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	ro := vmm.RestoreOptions{Prefault: req.Prefault}
	switch {
	case req.SourceURL == "":
		return errorf(http.StatusBadRequest, "vm.restore needs source_url, the file:///path URL of a snapshot directory")
	case len(req.ZoneUpdates) > 0:
		return errorf(http.StatusNotImplemented, "vm.restore cannot apply zone_updates: vio has no memory zones; leave it out")
	}
	switch req.MemoryRestoreMode {
	case "", "OnDemand":
	case "Copy":
		ro.Prefault = true
	default:
		return errorf(http.StatusBadRequest, "memory_restore_mode %q: want Copy or OnDemand", req.MemoryRestoreMode)
	}
	if err := s.ctl.Restore(req.SourceURL, ro); err != nil {
		return err
	}
	if req.Resume {
		if err := s.ctl.Resume(); err != nil {
			return err
		}
	}
	noContent(w)
	return nil
}

// resizeRequest is Cloud Hypervisor's VmResize; vio resizes the balloon
// only (see vmm.Controller.Resize).
type resizeRequest struct {
	DesiredVCPUs   *int   `json:"desired_vcpus"`
	DesiredRAM     *int64 `json:"desired_ram"`
	DesiredBalloon *int64 `json:"desired_balloon"`
}

// diskFaultsRequest is vio.disk-faults' body: the new rules of a faults
// node of a disk graph (docs/disks.md).
type diskFaultsRequest struct {
	Node  string            `json:"node"`
	Rules []graph.FaultRule `json:"rules"`
}

func (s *Server) diskFaults(w http.ResponseWriter, r *http.Request) error {
	var req diskFaultsRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.Node == "" {
		return errorf(http.StatusBadRequest, "vio.disk-faults needs the faults node's name (node)")
	}
	if err := s.ctl.SetDiskFaults(req.Node, req.Rules); err != nil {
		return err
	}
	noContent(w)
	return nil
}

// diskThrottleRequest is vio.disk-throttle's body: a throttle node's new
// buckets, in Cloud Hypervisor's RateLimiterConfig shape.
type diskThrottleRequest struct {
	Node string `json:"node"`
	graph.RateLimiterConfig
}

func (s *Server) diskThrottle(w http.ResponseWriter, r *http.Request) error {
	var req diskThrottleRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.Node == "" {
		return errorf(http.StatusBadRequest, "vio.disk-throttle needs the throttle node's name (node)")
	}
	if err := s.ctl.SetDiskThrottle(req.Node, req.RateLimiterConfig); err != nil {
		return err
	}
	noContent(w)
	return nil
}

// resizeDiskRequest is Cloud Hypervisor's VmResizeDisk.
type resizeDiskRequest struct {
	ID          string `json:"id"`
	DesiredSize *int64 `json:"desired_size"`
}

func (s *Server) resizeDisk(w http.ResponseWriter, r *http.Request) error {
	var req resizeDiskRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.ID == "" || req.DesiredSize == nil {
		return errorf(http.StatusBadRequest, "vm.resize-disk needs the disk's id and desired_size in bytes")
	}
	if err := s.ctl.ResizeDisk(req.ID, *req.DesiredSize); err != nil {
		return err
	}
	noContent(w)
	return nil
}

func (s *Server) resize(w http.ResponseWriter, r *http.Request) error {
	var req resizeRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := s.ctl.Resize(vmm.Resize{DesiredVCPUs: req.DesiredVCPUs, DesiredRAM: req.DesiredRAM, DesiredBalloon: req.DesiredBalloon}); err != nil {
		return err
	}
	noContent(w)
	return nil
}
