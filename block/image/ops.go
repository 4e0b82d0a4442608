package image

import (
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/qcow2"
)

// Info describes an image; its JSON form follows qemu-img info's.
type Info struct {
	Filename      string         `json:"filename"`
	Format        string         `json:"format"`
	VirtualSize   int64          `json:"virtual-size"`
	ActualSize    int64          `json:"actual-size"`
	ClusterSize   int            `json:"cluster-size,omitempty"`
	BackingFile   string         `json:"backing-filename,omitempty"`
	FullBacking   string         `json:"full-backing-filename,omitempty"`
	BackingFormat string         `json:"backing-filename-format,omitempty"`
	Dirty         bool           `json:"dirty-flag"`
	Snapshots     []SnapshotInfo `json:"snapshots,omitempty"`
	Specific      *Specific      `json:"format-specific,omitempty"`
}

// SnapshotInfo is an internal snapshot, in qemu-img's JSON shape.
type SnapshotInfo struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	VMStateSize uint64 `json:"vm-state-size"`
	DateSec     int64  `json:"date-sec"`
	DateNsec    int64  `json:"date-nsec"`
	VMClockSec  int64  `json:"vm-clock-sec"`
	VMClockNsec int64  `json:"vm-clock-nsec"`
}

// Specific holds qcow2 details.
type Specific struct {
	Type string       `json:"type"`
	Data SpecificData `json:"data"`
}

type SpecificData struct {
	Compat        string `json:"compat"`
	LazyRefcounts bool   `json:"lazy-refcounts"`
	RefcountBits  int    `json:"refcount-bits"`
	Corrupt       bool   `json:"corrupt"`
}

// ToolOptions say how GetInfo, Check and Repair open an image.
type ToolOptions struct {
	// Format is the image's format; "" probes it. The tools may probe:
	// they read the image rather than hand it to a guest, and backing
	// files stay confined (see OpenOptions.AllowBacking).
	Format       string
	AllowBacking bool
}

// GetInfo opens the image read-only and describes it.
func GetInfo(path string, o ToolOptions) (*Info, error) {
	b, err := Open(path, OpenOptions{ReadOnly: true, Lock: true, Format: o.Format, AllowBacking: o.AllowBacking})
	if err != nil {
		return nil, err
	}
	defer b.Close()
	in := &Info{Filename: path, Format: formatOf(b), VirtualSize: b.Size()}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err == nil {
		in.ActualSize = st.Blocks * 512
	}
	if img, ok := b.(*qcow2.Image); ok {
		qi := img.Info()
		in.ClusterSize = qi.ClusterSize
		in.BackingFile, in.BackingFormat = qi.BackingFile, qi.BackingFormat
		if qi.BackingFile != "" {
			in.FullBacking = resolve(filepath.Dir(path), qi.BackingFile)
		}
		in.Dirty = qi.Dirty
		for _, s := range qi.Snapshots {
			in.Snapshots = append(in.Snapshots, SnapshotInfo{
				ID: s.ID, Name: s.Name, VMStateSize: s.VMStateSize,
				DateSec: s.Date.Unix(), DateNsec: int64(s.Date.Nanosecond()),
				VMClockSec: int64(s.VMClock / time.Second), VMClockNsec: int64(s.VMClock % time.Second),
			})
		}
		in.Specific = &Specific{Type: Qcow2, Data: SpecificData{
			Compat: qi.Compat, LazyRefcounts: qi.LazyRefcounts, RefcountBits: qi.RefcountBits, Corrupt: qi.Corrupt,
		}}
	}
	return in, nil
}

// Check checks an image's metadata. Raw images have none: the result is
// empty.
func Check(path string, o ToolOptions) (qcow2.CheckResult, string, error) {
	return Repair(path, qcow2.RepairNone, o)
}

// Repair checks an image and repairs what mode allows (qcow2 only).
func Repair(path string, mode qcow2.RepairMode, o ToolOptions) (qcow2.CheckResult, string, error) {
	format := o.Format
	if format == "" {
		var err error
		if format, err = Probe(path); err != nil {
			return qcow2.CheckResult{}, "", fmt.Errorf("%s: %w", path, err)
		}
	} else if err := CheckFormat(format); err != nil {
		return qcow2.CheckResult{}, "", err
	}
	if format == Raw {
		return qcow2.CheckResult{}, Raw, nil
	}
	// The backing chain is not needed to check one image's metadata, but
	// opening it reports a missing backing file, which is worth knowing.
	b, err := Open(path, OpenOptions{ReadOnly: mode == qcow2.RepairNone, Format: Qcow2, Lock: true, AllowBacking: o.AllowBacking})
	if err != nil {
		return qcow2.CheckResult{}, Qcow2, err
	}
	res, err := b.(*qcow2.Image).Repair(mode)
	if cerr := b.Close(); err == nil {
		err = cerr
	}
	return res, Qcow2, err
}

// ConvertOptions configure Convert.
type ConvertOptions struct {
	Format string // of the destination; default qcow2
	// Source says how to open the source image.
	Source ToolOptions
	// Progress, if set, is called with bytes done and total.
	Progress func(done, total int64)
	// ClusterSize etc. for a qcow2 destination.
	ClusterSize int
	Compat      string
}

// Convert copies the guest-visible contents of src (any format, with its
// backing chain) into a new standalone image dst. Zero blocks are not
// written, so the destination stays sparse.
func Convert(src, dst string, opts ConvertOptions) error {
	in, err := Open(src, OpenOptions{ReadOnly: true, Lock: true, Format: opts.Source.Format, AllowBacking: opts.Source.AllowBacking})
	if err != nil {
		return err
	}
	defer in.Close()
	size := in.Size()
	if opts.Format == "" {
		opts.Format = Qcow2
	}
	if err := Create(dst, CreateOptions{Format: opts.Format, Size: size, ClusterSize: opts.ClusterSize, Compat: opts.Compat}); err != nil {
		return err
	}
	out, err := Open(dst, OpenOptions{Format: opts.Format, Lock: true})
	if err != nil {
		return err
	}
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	for off := int64(0); off < size; off += chunk {
		n := min(chunk, size-off)
		p := buf[:n]
		if _, err := in.ReadAt(p, off); err != nil {
			out.Close()
			return fmt.Errorf("reading %s: %w", src, err)
		}
		// Write only the non-zero 64 KiB pieces.
		const piece = 64 << 10
		for i := int64(0); i < n; i += piece {
			q := p[i:min(i+piece, n)]
			if allZero(q) {
				continue
			}
			if _, err := out.WriteAt(q, off+i); err != nil {
				out.Close()
				return fmt.Errorf("writing %s: %w", dst, err)
			}
		}
		if opts.Progress != nil {
			opts.Progress(off+n, size)
		}
	}
	if size == 0 && opts.Progress != nil {
		opts.Progress(0, 0)
	}
	return out.Close()
}

func allZero(p []byte) bool {
	for len(p) >= 8 {
		if p[0]|p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0 {
			return false
		}
		p = p[8:]
	}
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}

// Resize changes an image's virtual size. qcow2 images only grow.
func Resize(path string, size int64) error {
	b, err := Open(path, OpenOptions{Lock: true})
	if err != nil {
		return err
	}
	r, ok := b.(block.Resizer)
	if !ok {
		b.Close()
		return errors.New("this image cannot be resized")
	}
	if err := r.Resize(size); err != nil {
		b.Close()
		if errors.Is(err, errors.ErrUnsupported) {
			return fmt.Errorf("shrinking %s images is not supported", formatOf(b))
		}
		return err
	}
	return b.Close()
}

// Snapshot operations on a qcow2 image.
const (
	SnapshotCreate = iota
	SnapshotApply
	SnapshotDelete
)

// SnapshotOp creates, applies or deletes an internal snapshot.
func SnapshotOp(path string, op int, name string) error {
	img, err := openQcow2(path, false)
	if err != nil {
		return err
	}
	switch op {
	case SnapshotCreate:
		err = img.CreateSnapshot(name)
	case SnapshotApply:
		err = img.ApplySnapshot(name)
	case SnapshotDelete:
		err = img.DeleteSnapshot(name)
	}
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	return err
}

// Snapshots lists the internal snapshots of an image.
func Snapshots(path string) ([]qcow2.SnapshotInfo, error) {
	img, err := openQcow2(path, true)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	return img.Snapshots(), nil
}

func openQcow2(path string, ro bool) (*qcow2.Image, error) {
	b, err := Open(path, OpenOptions{ReadOnly: ro, Lock: true})
	if err != nil {
		return nil, err
	}
	img, ok := b.(*qcow2.Image)
	if !ok {
		b.Close()
		return nil, fmt.Errorf("%s is a raw image: only qcow2 images have snapshots", path)
	}
	return img, nil
}
