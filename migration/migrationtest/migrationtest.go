// Package migrationtest has doubles for package migration's two sides: a
// Source whose "guest" writes pages between dirty-log collections, and a
// Target that builds plain in-memory VMs. Their RAM is ordinary Go
// memory, so a test can compare what arrived with what was sent.
package migrationtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/migration"
	"github.com/viovmm/vio/state"
)

// Blob is a component whose state is a string: the device state a
// Source sends as section "blob".
type Blob struct{ Data string }

var _ state.Snapshottable = (*Blob)(nil)

func (*Blob) StateKind() string               { return "test-blob" }
func (*Blob) StateVersion() uint32            { return 1 }
func (b *Blob) MarshalState() ([]byte, error) { return state.Marshal(b.Data) }
func (b *Blob) UnmarshalState(v uint32, data []byte) error {
	return state.Load(v, 1, data, func(s string) error { b.Data = s; return nil })
}

// Source is a migration.Source over Go memory. Its guest is Step, which
// runs whenever Send collects region 0's dirty pages while the VM is not
// paused, as if the guest had run since the previous collection; it
// writes with Write, which records the page while logging is on.
type Source struct {
	ConfigJSON []byte
	Regions    []migration.Region
	Blob       Blob // the device state
	// Step is the guest: round counts its runs from 1.
	Step func(s *Source, round int)
	// BeforePause, if set, runs at the start of Pause, while the guest
	// still runs: its writes reach only the last collection.
	BeforePause func(s *Source)
	// PauseErr, if set, fails Pause.
	PauseErr error

	mu      sync.Mutex
	dirty   [][]uint64
	logging bool
	paused  bool
	round   int
	calls   []string
	broken  string // a violation of Send's contract
}

var _ migration.Source = (*Source)(nil)

// NewSource returns a Source with regions of the given sizes (whole
// pages) at consecutive GPAs from 0, all zero.
func NewSource(sizes ...int) *Source {
	s := &Source{ConfigJSON: []byte(`{"test":true}`), Blob: Blob{Data: "device state"}}
	var gpa uint64
	for _, n := range sizes {
		s.Regions = append(s.Regions, migration.Region{GPA: gpa, Data: make([]byte, n)})
		s.dirty = append(s.dirty, make([]uint64, (n/migration.PageSize+63)/64))
		gpa += uint64(n)
	}
	return s
}

// Write writes b at off of region i and records the pages while
// logging. A write while paused breaks the contract.
func (s *Source) Write(i int, off int, b []byte) {
	if s.paused {
		s.broken = "the guest wrote while paused"
	}
	copy(s.Regions[i].Data[off:], b)
	if !s.logging || len(b) == 0 {
		return
	}
	for p := off / migration.PageSize; p <= (off+len(b)-1)/migration.PageSize; p++ {
		s.dirty[i][p/64] |= 1 << (p % 64)
	}
}

func (s *Source) call(c string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, c)
}

// Calls returns the calls Send made, in order ("start-log", "pause",
// "state", "resume", "stop-log"), Dirty excepted.
func (s *Source) Calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}

// Paused reports whether the VM is paused now.
func (s *Source) Paused() bool { return s.paused }

// Err reports a broken contract: a write while paused, Dirty while not
// logging, Resume without Pause.
func (s *Source) Err() error {
	if s.broken != "" {
		return errors.New(s.broken)
	}
	return nil
}

// Snapshot returns a copy of RAM, to compare with what arrived.
func (s *Source) Snapshot() [][]byte {
	var out [][]byte
	for _, r := range s.Regions {
		out = append(out, bytes.Clone(r.Data))
	}
	return out
}

func (s *Source) Config() ([]byte, error) { return s.ConfigJSON, nil }
func (s *Source) RAM() []migration.Region { return s.Regions }

func (s *Source) StartDirtyLog() error {
	s.call("start-log")
	s.logging = true
	return nil
}

func (s *Source) Dirty(i int) ([]uint64, error) {
	if !s.logging {
		s.broken = "Dirty while not logging"
	}
	if i == 0 && !s.paused && s.Step != nil {
		s.round++
		s.Step(s, s.round)
	}
	out := s.dirty[i]
	s.dirty[i] = make([]uint64, len(out))
	return out, nil
}

func (s *Source) StopDirtyLog() {
	s.call("stop-log")
	s.logging = false
}

func (s *Source) Pause() error {
	if s.PauseErr != nil {
		return s.PauseErr
	}
	if s.BeforePause != nil {
		s.BeforePause(s)
	}
	s.call("pause")
	s.paused = true
	return nil
}

func (s *Source) Resume() error {
	s.call("resume")
	if !s.paused {
		s.broken = "Resume of a VM not paused"
	}
	s.paused = false
	return nil
}

func (s *Source) State() ([]byte, error) {
	s.call("state")
	if !s.paused {
		s.broken = "State of a running VM"
	}
	snap := state.New()
	if err := snap.Save("blob", &s.Blob); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := snap.Encode(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Target is a migration.Target building Incomings with RAM of Sizes at
// consecutive GPAs from 0. The config must be a JSON object.
type Target struct {
	Sizes      []int
	BuildErr   error
	RestoreErr error

	mu    sync.Mutex
	Built []*Incoming
}

var _ migration.Target = (*Target)(nil)

// Incoming is a received VM.
type Incoming struct {
	Config    []byte
	Regions   []migration.Region
	Blob      Blob
	Restored  bool
	Discarded bool
	// Shared: RAM is mapped from the source's memfd (BuildShared), and
	// Discard unmaps it (Regions becomes nil).
	Shared    bool
	restoreEr error
}

var _ migration.Incoming = (*Incoming)(nil)

func (t *Target) Build(config []byte) (migration.Incoming, error) {
	if t.BuildErr != nil {
		return nil, t.BuildErr
	}
	var obj map[string]any
	if err := json.Unmarshal(config, &obj); err != nil {
		return nil, fmt.Errorf("the VM config does not parse: %w", err)
	}
	in := &Incoming{Config: bytes.Clone(config), restoreEr: t.RestoreErr}
	var gpa uint64
	for _, n := range t.Sizes {
		in.Regions = append(in.Regions, migration.Region{GPA: gpa, Data: make([]byte, n)})
		gpa += uint64(n)
	}
	t.mu.Lock()
	t.Built = append(t.Built, in)
	t.mu.Unlock()
	return in, nil
}

func (in *Incoming) RAM() []migration.Region { return in.Regions }

func (in *Incoming) Restore(s *state.Snapshot) error {
	if in.restoreEr != nil {
		return in.restoreEr
	}
	if err := s.Restore("blob", &in.Blob); err != nil {
		return err
	}
	if left := s.Unrestored(); len(left) > 0 {
		return fmt.Errorf("state for %q, which this VM does not have", left)
	}
	in.Restored = true
	return nil
}

func (in *Incoming) Discard() {
	in.Discarded = true
	if in.Shared {
		for _, r := range in.Regions {
			unix.Munmap(r.Data)
		}
		in.Regions = nil
	}
}

// SharedSource is a Source whose RAM is one sealed memfd, as vio's with
// shared=on: it can migrate locally (migration.LocalSource).
type SharedSource struct {
	*Source
	FD int
	// SharedErr, if set, is SharedRAM's answer.
	SharedErr error
	offsets   []uint64
}

var _ migration.LocalSource = (*SharedSource)(nil)

// Seals is what NewSharedSource seals its memfd with (vio's memory
// package does the same).
const Seals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// NewSharedSource is NewSource with RAM in a memfd sealed with Seals,
// the regions one after the other in it. Close releases it.
func NewSharedSource(sizes ...int) (*SharedSource, error) {
	s := NewSource()
	fd, err := unix.MemfdCreate("migrationtest", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, err
	}
	ss := &SharedSource{Source: s, FD: fd}
	total := 0
	for _, n := range sizes {
		total += n
	}
	if err := unix.Ftruncate(fd, int64(total)); err != nil {
		ss.Close()
		return nil, err
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, Seals); err != nil {
		ss.Close()
		return nil, err
	}
	var off uint64
	for _, n := range sizes {
		b, err := unix.Mmap(fd, int64(off), n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			ss.Close()
			return nil, err
		}
		s.Regions = append(s.Regions, migration.Region{GPA: off, Data: b})
		s.dirty = append(s.dirty, make([]uint64, (n/migration.PageSize+63)/64))
		ss.offsets = append(ss.offsets, off)
		off += uint64(n)
	}
	return ss, nil
}

// SharedRAM implements migration.LocalSource.
func (s *SharedSource) SharedRAM() (int, []uint64, error) {
	if s.SharedErr != nil {
		return -1, nil, s.SharedErr
	}
	return s.FD, s.offsets, nil
}

// Close unmaps RAM and closes the memfd.
func (s *SharedSource) Close() {
	for _, r := range s.Regions {
		unix.Munmap(r.Data)
	}
	s.Regions = nil
	unix.Close(s.FD)
}

var _ migration.LocalTarget = (*Target)(nil)

// BuildShared maps the regions of ram.FD shared, as the Incoming's RAM;
// the regions must be of Sizes. Discard unmaps them.
func (t *Target) BuildShared(config []byte, ram migration.SharedRAM) (migration.Incoming, error) {
	if t.BuildErr != nil {
		return nil, t.BuildErr
	}
	var obj map[string]any
	if err := json.Unmarshal(config, &obj); err != nil {
		return nil, fmt.Errorf("the VM config does not parse: %w", err)
	}
	if len(ram.Regions) != len(t.Sizes) {
		return nil, fmt.Errorf("%d shared regions, this VM has %d", len(ram.Regions), len(t.Sizes))
	}
	in := &Incoming{Config: bytes.Clone(config), restoreEr: t.RestoreErr, Shared: true}
	for i, r := range ram.Regions {
		if r.Size != uint64(t.Sizes[i]) {
			in.Discard()
			return nil, fmt.Errorf("shared region %d is %d bytes, this VM's %d", i, r.Size, t.Sizes[i])
		}
		b, err := unix.Mmap(ram.FD, int64(r.Offset), int(r.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			in.Discard()
			return nil, err
		}
		in.Regions = append(in.Regions, migration.Region{GPA: r.GPA, Data: b})
	}
	t.mu.Lock()
	t.Built = append(t.Built, in)
	t.mu.Unlock()
	return in, nil
}

// DiskTarget is a Target that takes copies of the source's disks
// (migration.DiskTarget): it records what the disks record asked for,
// and fails with DisksErr if set.
type DiskTarget struct {
	Target
	DisksErr error
	Disks    []migration.Disk
	Token    migration.Token
}

var _ migration.DiskTarget = (*DiskTarget)(nil)

func (t *DiskTarget) BuildCopying(config []byte, disks []migration.Disk, token migration.Token) (migration.Incoming, error) {
	t.mu.Lock()
	t.Disks, t.Token = disks, token
	t.mu.Unlock()
	if t.DisksErr != nil {
		return nil, t.DisksErr
	}
	return t.Build(config)
}

// Copier is a migration.DiskCopier whose copy the test drives: Sync
// says every disk is in sync, Fail that a copy failed (before or after
// Sync).
type Copier struct {
	List     []migration.Disk
	StartErr error

	once  sync.Once
	ready chan struct{}

	mu            sync.Mutex
	token         migration.Token
	started       bool
	copied, total uint64
	err           error
	startedBefore []string // the Source's calls when Start ran
	sourceCalls   func() []string
}

var _ migration.DiskCopier = (*Copier)(nil)

// NewCopier returns a Copier of disks, total bytes to copy; calls, if
// set, is read when Start runs (StartCalls reports it).
func NewCopier(disks []migration.Disk, calls func() []string) *Copier {
	c := &Copier{List: disks, ready: make(chan struct{}), sourceCalls: calls}
	for _, d := range disks {
		c.total += uint64(d.Size)
	}
	return c
}

func (c *Copier) Disks() []migration.Disk { return c.List }

func (c *Copier) Start(token migration.Token) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sourceCalls != nil {
		c.startedBefore = c.sourceCalls()
	}
	if c.StartErr != nil {
		return c.StartErr
	}
	c.token, c.started = token, true
	return nil
}

func (c *Copier) Ready() <-chan struct{} { return c.ready }

func (c *Copier) Progress() (uint64, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.copied, c.total
}

func (c *Copier) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Sync marks every byte copied and the disks in sync.
func (c *Copier) Sync() {
	c.mu.Lock()
	c.copied = c.total
	c.mu.Unlock()
	c.once.Do(func() { close(c.ready) })
}

// Fail makes the copy fail with err.
func (c *Copier) Fail(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
	c.once.Do(func() { close(c.ready) })
}

// Started returns the token Start got, and whether it ran and succeeded.
func (c *Copier) Started() (migration.Token, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token, c.started
}

// StartCalls returns the Source's calls as they were when Start ran.
func (c *Copier) StartCalls() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.startedBefore
}
