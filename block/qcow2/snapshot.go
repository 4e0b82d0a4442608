package qcow2

import (
	"errors"
	"fmt"
	"github.com/viovmm/vio/block"
	"strconv"
	"time"
)

// SnapshotInfo describes an internal snapshot.
type SnapshotInfo struct {
	ID, Name    string
	Date        time.Time
	VMClock     time.Duration
	VMStateSize uint64
	DiskSize    int64
}

// ErrNoSnapshot is matched when a named snapshot does not exist.
var ErrNoSnapshot = errors.New("qcow2: no such snapshot")

func (img *Image) loadSnapshots() error {
	h := img.h
	if h.nbSnapshots == 0 {
		return nil
	}
	// Each entry is at most 40 bytes, bounded extra data, two 16-bit
	// length strings and padding; never read more than the table can be.
	most := uint64(h.nbSnapshots) * (40 + maxSnapExtra + 2*65535 + 8)
	n := min(most, maxSnapTableBytes, uint64(img.fileSize)-h.snapshotsOffset)
	buf := make([]byte, n)
	if err := img.readMeta(buf, h.snapshotsOffset); err != nil {
		return fmt.Errorf("qcow2: reading snapshot table: %w", err)
	}
	snaps, _, err := parseSnapshots(buf, int(h.nbSnapshots), img.cbits, img.fileSize, h.version)
	if err != nil {
		return err
	}
	img.snaps = snaps
	return nil
}

func (img *Image) snapshotInfos() []SnapshotInfo {
	var out []SnapshotInfo
	for _, s := range img.snaps {
		out = append(out, SnapshotInfo{
			ID: s.id, Name: s.name, Date: time.Unix(int64(s.dateSec), int64(s.dateNsec)),
			VMClock: time.Duration(s.vmClockNs), VMStateSize: s.vmState, DiskSize: int64(s.diskSize),
		})
	}
	return out
}

// Snapshots lists the internal snapshots.
func (img *Image) Snapshots() []SnapshotInfo {
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.snapshotInfos()
}

func (img *Image) findSnapshot(name string) int {
	for i, s := range img.snaps {
		if s.name == name {
			return i
		}
	}
	for i, s := range img.snaps {
		if s.id == name {
			return i
		}
	}
	return -1
}

// exclusive runs f with all I/O drained and metadata written back.
func (img *Image) exclusive(f func() error) error {
	if img.closed.Load() {
		return block.ErrClosed
	}
	if img.readOnly {
		return block.ErrReadOnly
	}
	img.ioLock.Lock()
	defer img.ioLock.Unlock()
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.err != nil {
		return img.err
	}
	if err := img.writeback(); err != nil {
		return err
	}
	if err := f(); err != nil {
		return err
	}
	if err := img.writeback(); err != nil {
		return err
	}
	return img.applyFrees()
}

// CreateSnapshot records the current disk contents as snapshot name.
func (img *Image) CreateSnapshot(name string) error {
	if name == "" || len(name) > 65535 {
		return errors.New("qcow2: snapshot name must be 1 to 65535 bytes")
	}
	return img.exclusive(func() error {
		if img.findSnapshot(name) >= 0 {
			return fmt.Errorf("qcow2: a snapshot named %q already exists", name)
		}
		if len(img.snaps) >= maxSnapshots {
			return fmt.Errorf("qcow2: too many snapshots")
		}
		// First make the active tables stop claiming exclusive ownership,
		// durably; only then raise the refcounts. A crash in between
		// leaves flags that are merely too cautious (refcount 1, flag
		// clear: an unneeded copy on write, which qemu-img check -r all
		// tidies), never a flag that would let a write reach a cluster
		// the snapshot shares.
		if err := img.clearCopied(); err != nil {
			return err
		}
		if err := img.writeback(); err != nil {
			return err
		}
		if err := img.updateTree(img.l1, 1); err != nil {
			return err
		}
		// The snapshot's L1 is a copy of the active one, which after
		// fixCopied no longer claims exclusive ownership of anything.
		l1off, err := img.writeTableCopy(img.l1)
		if err != nil {
			return err
		}
		id := 1
		for _, s := range img.snaps {
			if n, err := strconv.Atoi(s.id); err == nil && n >= id {
				id = n + 1
			}
		}
		now := time.Now()
		snaps := append(append([]snapshot(nil), img.snaps...), snapshot{
			l1Offset: l1off, l1Size: uint32(len(img.l1)), id: strconv.Itoa(id), name: name,
			dateSec: uint32(now.Unix()), dateNsec: uint32(now.Nanosecond()),
			diskSize: img.h.size, hasIcount: true,
		})
		return img.writeSnapshotTable(snaps)
	})
}

// writeTableCopy writes table into newly allocated clusters, durable.
func (img *Image) writeTableCopy(table []uint64) (uint64, error) {
	n := max(1, (uint64(len(table))*8+img.cs-1)>>img.cbits)
	off, _, err := img.allocate(n)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, n*img.cs)
	for i, e := range table {
		be.PutUint64(buf[i*8:], e)
	}
	if err := img.writeMeta(buf, off); err != nil {
		return 0, err
	}
	return off, nil
}

// writeSnapshotTable writes a new snapshot table and switches the header
// to it once everything it refers to is durable.
func (img *Image) writeSnapshotTable(snaps []snapshot) error {
	buf := encodeSnapshots(snaps)
	var off uint64
	if len(buf) > 0 {
		n := (uint64(len(buf)) + img.cs - 1) >> img.cbits
		var err error
		if off, _, err = img.allocate(n); err != nil {
			return err
		}
		if err := img.writeMeta(buf, off); err != nil {
			return err
		}
	}
	if err := img.writeback(); err != nil {
		return err
	}
	oldOff, oldLen := img.h.snapshotsOffset, uint64(len(encodeSnapshots(img.snaps)))
	img.h.snapshotsOffset, img.h.nbSnapshots = off, uint32(len(snaps))
	if err := img.writeHeader(); err != nil {
		return img.fail(err)
	}
	img.snaps = snaps
	img.freeRange(oldOff, oldLen)
	return nil
}

// DeleteSnapshot removes a snapshot (by name or ID) and releases the
// clusters only it used.
func (img *Image) DeleteSnapshot(name string) error {
	return img.exclusive(func() error {
		i := img.findSnapshot(name)
		if i < 0 {
			return fmt.Errorf("%w: %q", ErrNoSnapshot, name)
		}
		s := img.snaps[i]
		snaps := append(append([]snapshot(nil), img.snaps[:i]...), img.snaps[i+1:]...)
		l1, err := img.readTable(s.l1Offset, uint64(s.l1Size))
		if err != nil {
			return err
		}
		if err := img.writeSnapshotTable(snaps); err != nil {
			return err
		}
		// The header no longer mentions the snapshot: its references
		// can go. (A crash from here leaves leaks; the copied flags of
		// the active tree are repaired by the next step.)
		if err := img.updateTree(l1, -1); err != nil {
			return err
		}
		img.freeRange(s.l1Offset, uint64(s.l1Size)*8)
		if err := img.writeback(); err != nil {
			return err
		}
		if err := img.applyFrees(); err != nil {
			return err
		}
		return img.fixCopied()
	})
}

// ApplySnapshot reverts the disk to a snapshot (by name or ID); the
// snapshot itself is kept.
func (img *Image) ApplySnapshot(name string) error {
	return img.exclusive(func() error {
		i := img.findSnapshot(name)
		if i < 0 {
			return fmt.Errorf("%w: %q", ErrNoSnapshot, name)
		}
		s := img.snaps[i]
		sl1, err := img.readTable(s.l1Offset, uint64(s.l1Size))
		if err != nil {
			return err
		}
		size := img.h.size
		if s.diskSize > maxVirtualSize || s.diskSize%512 != 0 {
			return corrupt("snapshot %q has an invalid disk size %d", s.name, s.diskSize)
		}
		if s.diskSize != 0 {
			size = s.diskSize
		}
		if need := max(uint64(len(sl1)), l1Needed(size, img.cbits)); need > uint64(len(img.l1)) {
			if err := img.growL1(need); err != nil {
				return err
			}
		}
		if err := img.updateTree(sl1, 1); err != nil {
			return err
		}
		if err := img.writeback(); err != nil {
			return err
		}
		old := append([]uint64(nil), img.l1...)
		for j := range img.l1 {
			e := uint64(0)
			if j < len(sl1) {
				e = sl1[j] &^ oflagCopied
			}
			img.setL1(uint64(j), e)
		}
		img.h.size = size
		if err := img.writeback(); err != nil {
			return err
		}
		if err := img.writeHeader(); err != nil {
			return img.fail(err)
		}
		img.size.Store(int64(size))
		if err := img.updateTree(old, -1); err != nil {
			return err
		}
		if err := img.writeback(); err != nil {
			return err
		}
		return img.fixCopied()
	})
}

// updateTree adds delta to the refcount of every L2 table and data cluster
// reachable from l1. Clusters whose count drops to zero leave the cache.
func (img *Image) updateTree(l1 []uint64, delta int64) error {
	// An L2 table listed twice in one L1 table is invalid, and would let
	// a small hostile file demand work proportional to its square.
	seen := make(map[uint64]bool)
	for i, e := range l1 {
		if e&l1Reserved != 0 {
			return corrupt("L1 entry %d (%#x) has reserved bits set", i, e)
		}
		off := e & l1OffsetMask
		if off == 0 {
			continue
		}
		if seen[off] {
			return corrupt("L2 table %#x is listed twice in one L1 table", off)
		}
		seen[off] = true
		t, err := img.l2Table(off)
		if err != nil {
			return err
		}
		data := append([]byte(nil), t.data...)
		for j := uint64(0); j < img.l2Entries; j++ {
			m, err := img.decode(be.Uint64(data[j*8:]))
			if err != nil {
				return err
			}
			var first, last uint64
			switch {
			case m.kind == kCompressed:
				first, last = m.host>>img.cbits, (m.host+m.csize-1)>>img.cbits
			case m.host != 0:
				first, last = m.host>>img.cbits, m.host>>img.cbits
			default:
				continue
			}
			for c := first; c <= last; c++ {
				if err := img.addRefDrop(c, delta); err != nil {
					return err
				}
			}
		}
		if err := img.addRefDrop(off>>img.cbits, delta); err != nil {
			return err
		}
	}
	return nil
}

func (img *Image) addRefDrop(c uint64, delta int64) error {
	v, err := img.addRef(c, delta)
	if err != nil {
		return img.fail(err)
	}
	if v == 0 {
		delete(img.meta, c)
		img.l2c.drop(c << img.cbits)
		img.freeHint = min(img.freeHint, c)
	}
	return nil
}

// clearCopied removes the copied flag from every active L1 and L2 entry.
func (img *Image) clearCopied() error {
	for i := range img.l1 {
		off, copied, err := img.l1Entry(uint64(i))
		if err != nil {
			return err
		}
		if off == 0 {
			continue
		}
		if copied {
			img.setL1(uint64(i), off)
		}
		t, err := img.l2Table(off)
		if err != nil {
			return err
		}
		for j := uint64(0); j < img.l2Entries; j++ {
			if e := be.Uint64(t.data[j*8:]); e&oflagCopied != 0 {
				be.PutUint64(t.data[j*8:], e&^oflagCopied)
				t.dirty = true
			}
		}
	}
	return nil
}

// fixCopied sets the copied flag on exactly those active L1 and L2
// entries whose cluster has refcount 1.
func (img *Image) fixCopied() error {
	seen := make(map[uint64]bool)
	for i := range img.l1 {
		off, copied, err := img.l1Entry(uint64(i))
		if err != nil {
			return err
		}
		if off == 0 {
			continue
		}
		if seen[off] {
			return corrupt("L2 table %#x is listed twice in the L1 table", off)
		}
		seen[off] = true
		r, err := img.refcount(off >> img.cbits)
		if err != nil {
			return err
		}
		if (r == 1) != copied {
			img.setL1(uint64(i), off|map[bool]uint64{true: oflagCopied}[r == 1])
		}
		t, err := img.l2Table(off)
		if err != nil {
			return err
		}
		for j := uint64(0); j < img.l2Entries; j++ {
			e := be.Uint64(t.data[j*8:])
			m, err := img.decode(e)
			if err != nil {
				return err
			}
			if m.kind == kCompressed || m.host == 0 {
				continue
			}
			r, err := img.refcount(m.host >> img.cbits)
			if err != nil {
				return err
			}
			if r == 0 {
				return corrupt("cluster %#x is in use but has refcount 0", m.host)
			}
			want := e &^ oflagCopied
			if r == 1 {
				want |= oflagCopied
			}
			if want != e {
				// The table may have been evicted by the refcount
				// lookup: fetch it again before writing.
				if t, err = img.l2Table(off); err != nil {
					return err
				}
				be.PutUint64(t.data[j*8:], want)
				t.dirty = true
			}
		}
	}
	return nil
}
