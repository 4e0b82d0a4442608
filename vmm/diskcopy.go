package vmm

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/filter"
	"github.com/viovmm/vio/block/handoff"
	"github.com/viovmm/vio/block/mirror"
	"github.com/viovmm/vio/block/nbd"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/migration"
)

// A migration copies the disks that are not on storage both hosts see
// (vm.send-migration's copy_disks; docs/migration.md, "Disks not on
// shared storage"). The destination serves its own image of each over
// NBD through the migration's listener (diskexport.go); here, at the
// source, each such disk gets a mirror in front of its image, inside the
// handoff.Disk its virtio-blk device goes through (Interpose): slot 0 is
// the image, the disk of record (mirror.Options.Primary: never dropped,
// the only one read), and slot 1 an NBD client of the destination's
// export, which the mirror rebuilds in the background while every guest
// write goes to both. Package migration waits until each is in sync
// before it copies RAM.
//
// At the switchover the VM's pause flushes every copied disk and checks
// that its copy is still in sync (settle); the release of the disks that
// follows closes the mirror (the NBD client flushes and disconnects) and
// then the image, as for any disk. If the migration fails at any point
// the mirror is withdrawn (abort) or was closed with the release: the VM
// runs on its own image, which had every write.

// copyTimeouts: how long a stalled destination may hold a guest write
// (every write waits for both sides) before its copy is dropped and the
// migration fails: a request unanswered for copyRequestTimeout ends the
// connection, which is dialled again copyReconnects times.
const (
	copyRequestTimeout = 10 * time.Second
	copyReconnects     = 2
	copyDialTimeout    = 30 * time.Second
)

// diskCopy is the source's copy of its disks (migration.DiskCopier).
type diskCopy struct {
	v     *VM
	ctx   context.Context
	ep    migration.Endpoint
	tls   *tls.Config
	disks []*copiedDisk
	ready chan struct{}

	mu      sync.Mutex
	err     error
	readied bool
}

// copiedDisk is one disk being copied.
type copiedDisk struct {
	id   string
	size int64
	h    *handoff.Disk
	// Guarded by diskCopy.mu.
	m      *mirror.Mirror
	synced bool
}

var _ migration.DiskCopier = (*diskCopy)(nil)

// newDiskCopy resolves copy_disks (ids, or every writable disk with all)
// against the VM's disks, with a sentence for each that cannot be copied.
func (v *VM) newDiskCopy(ctx context.Context, ids []string, all bool, ep migration.Endpoint, tlsCfg *tls.Config) (*diskCopy, error) {
	byID := map[string]*config.Disk{}
	var names []string
	for i := range v.cfg.Disks {
		d := &v.cfg.Disks[i]
		byID[d.ID] = d
		names = append(names, d.ID)
	}
	if all {
		ids = nil
		for _, d := range v.cfg.Disks {
			if copyable(&d) == nil {
				ids = append(ids, d.ID)
			}
		}
		if len(ids) == 0 {
			return nil, errors.New("copy_disks: the VM has no writable disk with a path to copy; leave out copy_disks")
		}
	}
	if len(ids) > migration.MaxCopiedDisks {
		return nil, fmt.Errorf("copy_disks names %d disks; a migration copies at most %d", len(ids), migration.MaxCopiedDisks)
	}
	c := &diskCopy{v: v, ctx: ctx, ep: ep, tls: tlsCfg, ready: make(chan struct{})}
	for i, id := range ids {
		d, ok := byID[id]
		switch {
		case !ok:
			return nil, fmt.Errorf("copy_disks names disk %q, which this VM does not have (its disks: %s)", id, strings.Join(names, ", "))
		case slices.Contains(ids[:i], id):
			return nil, fmt.Errorf("copy_disks names disk %q twice", id)
		case len(id) > migration.MaxDiskIDLen:
			return nil, fmt.Errorf("cannot copy disk %.40q...: its id is longer than %d bytes", id, migration.MaxDiskIDLen)
		}
		if err := copyable(d); err != nil {
			return nil, err
		}
		h, _ := v.diskByID(id).(*handoff.Disk)
		if h == nil {
			return nil, fmt.Errorf("cannot copy disk %s: it is not a virtio disk this VM hands over", id)
		}
		c.disks = append(c.disks, &copiedDisk{id: id, size: h.Size(), h: h})
	}
	return c, nil
}

// copyable says why a disk cannot be copied, or nil.
func copyable(d *config.Disk) error {
	switch {
	case d.Iface != "" && d.Iface != config.DiskVirtio:
		return fmt.Errorf("cannot copy disk %s: only virtio disks are copied; put it on storage both hosts see", d.ID)
	case d.VhostUser:
		return fmt.Errorf("cannot copy disk %s: its data lives in its vhost-user back-end, which vio does not move; copy it with the back-end's own tools", d.ID)
	case d.Graph != nil:
		return fmt.Errorf("cannot copy disk %s: it is a disk graph; copy_disks takes disks with a path (a vio.disk-mirror child on the destination's storage moves a graph's data)", d.ID)
	case d.Readonly:
		return fmt.Errorf("cannot copy disk %s: it is read-only; copy its image to the destination before migrating, or put it on storage both hosts see", d.ID)
	case len(d.VirtualFunctions) > 0:
		return fmt.Errorf("cannot copy disk %s: it has SR-IOV virtual functions, whose images are not copied", d.ID)
	}
	return nil
}

// diskByID returns the handoff.Disk of the VM's disk id, which its
// virtio-blk device reads and writes through, or nil.
func (v *VM) diskByID(id string) block.Backend {
	for _, d := range v.handoffs() {
		if d.id == id {
			return d.h
		}
	}
	return nil
}

func (c *diskCopy) Disks() []migration.Disk {
	out := make([]migration.Disk, len(c.disks))
	for i, d := range c.disks {
		out[i] = migration.Disk{ID: d.id, Size: d.size}
	}
	return out
}

// Start connects to each disk's export and puts the mirror in front of
// its image. On error every disk started is put back as it was.
func (c *diskCopy) Start(token migration.Token) error {
	for _, d := range c.disks {
		if err := c.start(d, token); err != nil {
			c.abort()
			return fmt.Errorf("disk %s: %w", d.id, err)
		}
	}
	c.v.log.Info("copying disks to the migration's destination", "disks", len(c.disks))
	return nil
}

func (c *diskCopy) start(d *copiedDisk, token migration.Token) error {
	ctx, cancel := context.WithTimeout(c.ctx, copyDialTimeout)
	defer cancel()
	cl, err := nbd.Dial(ctx, nbdURI(c.ep, d.id), nbd.Options{
		Dial:              func(ctx context.Context) (net.Conn, error) { return migration.DialDisk(ctx, c.ep, c.tls, token) },
		RequestTimeout:    copyRequestTimeout,
		ReconnectAttempts: copyReconnects,
		Logf:              func(f string, a ...any) { c.v.log.Warn(fmt.Sprintf(f, a...), "disk", d.id) },
	})
	if err != nil {
		return fmt.Errorf("connecting to the destination's copy: %w", err)
	}
	if cl.Size() < d.size {
		cl.Close()
		return fmt.Errorf("the destination's copy is %d bytes, the disk %d", cl.Size(), d.size)
	}
	owned := false // the mirror owns cl once attached
	err = d.h.Interpose(func(img block.Backend) (block.Backend, error) {
		be, err := mirror.NewBackend([]block.Backend{img}, mirror.Options{Primary: true, AssumeClean: true, Events: c.events(d)})
		if err != nil {
			return nil, err
		}
		m := mirror.Of(be)
		if _, err := m.Attach(1, zeroSkipping(cl)); err != nil {
			be.Close()
			return nil, err
		}
		owned = true
		c.mu.Lock()
		d.m = m
		c.mu.Unlock()
		return be, nil
	})
	if err != nil && !owned {
		cl.Close()
	}
	return err
}

// nbdURI names disk id's export at the destination: the address only
// appears in messages, since Options.Dial connects.
func nbdURI(ep migration.Endpoint, id string) string {
	if ep.Network == "unix" {
		return "nbd+unix:///" + url.PathEscape(id) + "?socket=" + url.QueryEscape(ep.Address)
	}
	return "nbd://" + ep.Address + "/" + url.PathEscape(id)
}

// events follows a disk's mirror: its copy in sync, or failed.
func (c *diskCopy) events(d *copiedDisk) func(string, ...string) {
	return func(ev string, kv ...string) {
		switch ev {
		case "resync-done":
			c.mu.Lock()
			d.synced = true
			c.readyLocked()
			c.mu.Unlock()
			c.v.log.Info("disk copied to the migration's destination", append([]any{"disk", d.id}, anys(kv)...)...)
		case "resync-failed", "child-failed":
			err := fmt.Errorf("disk %s: its copy at the destination failed (%s)", d.id, kvValue(kv, "error"))
			c.mu.Lock()
			if c.err == nil {
				c.err = err
			}
			c.readyLocked()
			c.mu.Unlock()
			c.v.log.Warn("a disk's copy to the migration's destination failed", "disk", d.id, "err", err)
		}
	}
}

func kvValue(kv []string, key string) string {
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i] == key {
			return kv[i+1]
		}
	}
	return ""
}

// readyLocked closes ready once every disk is in sync or one failed.
func (c *diskCopy) readyLocked() {
	if c.readied {
		return
	}
	for _, d := range c.disks {
		if !d.synced && c.err == nil {
			return
		}
	}
	c.readied = true
	close(c.ready)
}

func (c *diskCopy) Ready() <-chan struct{} { return c.ready }

func (c *diskCopy) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Progress counts a synced disk whole, and a syncing one as far as its
// rebuild got.
func (c *diskCopy) Progress() (copied, total uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range c.disks {
		total += uint64(d.size)
		switch {
		case d.synced:
			copied += uint64(d.size)
		case d.m != nil:
			if p := d.m.Status().Rebuild; p != nil {
				copied += uint64(p.Copied)
			}
		}
	}
	return copied, total
}

// settle is the switchover's check, with the VM's vCPUs and devices
// paused: each copied disk is flushed on both sides, and its copy must
// then still be in sync (a copy that failed a write or the flush was
// dropped, and the destination lacks data). On error the migration fails
// and the VM resumes here.
func (c *diskCopy) settle() error {
	if err := c.Err(); err != nil {
		return err
	}
	for _, d := range c.disks {
		if err := d.h.Flush(); err != nil {
			return fmt.Errorf("disk %s: flushing it before the switchover: %w", d.id, err)
		}
		c.mu.Lock()
		m := d.m
		c.mu.Unlock()
		if m == nil {
			return fmt.Errorf("disk %s: its copy never started", d.id)
		}
		st := m.Status()
		if len(st.Children) < 2 || st.Children[1].State != mirror.InSync.String() {
			why := ""
			if len(st.Children) > 1 && st.Children[1].Error != "" {
				why = ": " + st.Children[1].Error
			}
			return fmt.Errorf("disk %s: its copy at the destination is not in sync at the switchover%s", d.id, why)
		}
	}
	return nil
}

// abort puts every disk back on its image alone: the mirror closes, its
// NBD client with it. The image had every write (it is the mirror's
// primary), so the VM goes on as if no copy had been made. A disk whose
// image was released at the switchover has no mirror any more.
func (c *diskCopy) abort() {
	for _, d := range c.disks {
		if !d.h.Interposed() {
			continue
		}
		if err := d.h.Withdraw(); err != nil {
			c.v.log.Warn("closing a disk's copy to the failed migration's destination", "disk", d.id, "err", err)
		}
	}
}

// zeroSkipping sends the copy's all-zero writes as NBD write-zeroes: most
// of a disk is often zeroes, which then cost a request header rather than
// their bytes, and the destination's image stays as sparse as the data
// allows.
func zeroSkipping(b block.Backend) block.Backend {
	return filter.View(&zeroSkip{filter.Base{Child: b}}, filter.CapsOf(b))
}

type zeroSkip struct{ filter.Base }

var zeroBlock = make([]byte, 64<<10)

func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroBlock))
		if !bytes.Equal(p[:n], zeroBlock[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

func (z *zeroSkip) WriteAt(p []byte, off int64) (int, error) {
	return z.WritevAt([][]byte{p}, off)
}

func (z *zeroSkip) WritevAt(bufs [][]byte, off int64) (int, error) {
	zw, ok := z.Child.(block.ZeroWriter)
	n := 0
	for _, b := range bufs {
		if ok && !isZero(b) {
			ok = false
		}
		n += len(b)
	}
	if !ok || n == 0 {
		return block.WritevAt(z.Child, bufs, off)
	}
	if err := zw.WriteZeroes(off, int64(n), true); err != nil {
		return 0, err
	}
	return n, nil
}
