// Package image opens, creates and manages disk image files of any format
// vio knows (raw, qcow2), probing the format from the file's contents and
// following backing-file chains. It is the library behind `vio image`
// and what a VM configuration uses to turn a path into a block.Backend.
//
// An image's contents are untrusted: a guest writes its raw disk, and a
// qcow2 header it writes at sector 0 would, if the file were then probed,
// name any host file as backing. So probing is confined (see OpenDisk for
// when a disk is probed at all), and a backing file name recorded in an
// image is followed only if it is relative and has no ".." component,
// unless OpenOptions.AllowBacking says the image is trusted (see confine).
package image

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/qcow2"
	"github.com/viovmm/vio/block/raw"
)

// Formats vio reads and writes.
const (
	Raw   = "raw"
	Qcow2 = "qcow2"
)

// MaxChain bounds backing-file chains, which also stops loops.
const MaxChain = 32

// ErrUnknownFormat is matched when a format name or a file's format is
// not one vio handles.
var ErrUnknownFormat = errors.New("unknown image format")

// CheckFormat validates a format name given by a user.
func CheckFormat(f string) error {
	if f == Raw || f == Qcow2 {
		return nil
	}
	return fmt.Errorf("%w %q: vio knows raw and qcow2", ErrUnknownFormat, f)
}

// foreign recognises formats vio cannot open, so that they are not
// mistaken for raw disks.
var foreign = []struct {
	magic []byte
	at    int
	name  string
}{
	{[]byte("KDMV"), 0, "VMDK"},
	{[]byte("# Disk DescriptorFile"), 0, "VMDK descriptor"},
	{[]byte("vhdxfile"), 0, "VHDX"},
	{[]byte("conectix"), 0, "VHD"},
	{[]byte("<<< Oracle VM VirtualBox Disk Image >>>"), 0, "VDI"},
	{[]byte("QFI\xfb"), -1, ""},
	{[]byte("LUKS\xba\xbe"), 0, "LUKS"},
}

// Probe returns the format of the image at path, as QEMU would guess it:
// qcow2 by its magic, raw otherwise. Formats vio cannot open are errors.
func Probe(path string) (string, error) {
	f, err := raw.OpenImageFile(path, os.O_RDONLY)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, 512)
	n, _ := f.Read(head)
	return probeBytes(head[:n])
}

func probeBytes(head []byte) (string, error) {
	if qcow2.Probe(head) {
		return Qcow2, nil
	}
	for _, m := range foreign {
		if m.at >= 0 && bytes.HasPrefix(head[m.at:], m.magic) {
			if m.name == "LUKS" {
				return "", fmt.Errorf("%w: it is a LUKS encrypted image: open it with encrypt=on and its key (--disk path=FILE,encrypt=on,key_file=KEY; docs/crypt.md), or say format=raw to hand the guest the ciphertext", ErrUnknownFormat)
			}
			return "", fmt.Errorf("%w: it is a %s image, which vio cannot open (convert it with qemu-img)", ErrUnknownFormat, m.name)
		}
	}
	return Raw, nil
}

// OpenOptions configure Open.
type OpenOptions struct {
	Format   string // "" to probe
	ReadOnly bool
	Cache    raw.CacheMode // for the image file; backing files use the same
	// Lock takes QEMU-compatible locks on every file of the chain, as
	// QEMU does: no other vio or QEMU process may then write them (nor,
	// while writable, read them). The operations of this package that
	// stand for a tool (GetInfo, Check, Convert, Resize, snapshots) lock.
	Lock bool
	// AllowBacking lets the backing files named in the image (and in its
	// backing files) be absolute paths, contain "..", or be NBD URIs.
	// Without it only relative names below the naming image's directory
	// are followed. Set it only for images whose headers no guest or
	// other untrusted party has written.
	AllowBacking bool
	// GuardHead refuses writes that would make the first sector of a raw
	// image probe as another format (see headGuard). OpenDisk sets it for
	// a writable raw image whose format was probed.
	GuardHead bool
	// NBDTLS, for an NBD URI, makes the connection TLS with this config
	// (see nbd.ClientTLSConfig); nil connects in the clear.
	NBDTLS *tls.Config
}

// ErrBackingRefused is matched when an image names a backing file outside
// what OpenOptions.AllowBacking permits.
var ErrBackingRefused = errors.New("backing file refused")

// traceOpen, if set (by tests), is told every path open is about to use,
// backing files included.
var traceOpen func(path string)

// Open opens the image at path as a block.Backend: a *raw.File or a
// *qcow2.Image with its backing chain attached (opened read-only, names
// relative to the directory of the image that names them).
func Open(path string, opts OpenOptions) (block.Backend, error) {
	return open(path, opts, 0)
}

func open(path string, opts OpenOptions, depth int) (block.Backend, error) {
	if depth > MaxChain {
		return nil, fmt.Errorf("backing chain longer than %d images (a loop?) at %s", MaxChain, path)
	}
	if traceOpen != nil {
		traceOpen(path)
	}
	if IsNBD(path) {
		return openNBD(path, opts)
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s does not exist", path)
	}
	format := opts.Format
	if format == "" {
		var err error
		if format, err = Probe(path); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	} else if err := CheckFormat(format); err != nil {
		return nil, err
	}
	f, err := raw.Open(path, raw.Options{ReadOnly: opts.ReadOnly, Cache: opts.Cache, Lock: opts.Lock})
	if err != nil {
		return nil, err
	}
	if format == Raw {
		if opts.GuardHead && !opts.ReadOnly {
			return &headGuard{File: f}, nil
		}
		return f, nil
	}
	dir := filepath.Dir(path)
	img, err := qcow2.Open(f, qcow2.Options{
		ReadOnly: opts.ReadOnly,
		OpenBacking: func(name, bformat string) (block.Backend, error) {
			full, err := confine(dir, name, opts.AllowBacking)
			if err != nil {
				return nil, err
			}
			if _, err := os.Stat(full); errors.Is(err, fs.ErrNotExist) && !IsNBD(full) {
				return nil, fmt.Errorf("backing file %q (looked for at %s) does not exist", name, full)
			}
			return open(full, OpenOptions{Format: bformat, ReadOnly: true, Cache: opts.Cache, Lock: opts.Lock, AllowBacking: opts.AllowBacking}, depth+1)
		},
	})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return img, nil
}

// confine resolves the backing file name an image in dir records, refusing
// what an untrusted image must not reach: an absolute path (/etc/shadow,
// /dev/sda), a ".." component (a neighbour's disk), an NBD URI (a network
// connection of the image's choosing), an empty name or one with a NUL.
// What remains can only name files in dir and below it, which is where
// the user keeps this image's own chain. With allow, names are resolved as
// QEMU does and nothing is refused.
func confine(dir, name string, allow bool) (string, error) {
	if allow {
		return resolve(dir, name), nil
	}
	refuse := func(why string) (string, error) {
		return "", fmt.Errorf("%w: the image names backing file %q, which %s; vio follows only relative names without \"..\" unless told the image is trusted (--disk ...,backing=allow, or --allow-backing for vio image)", ErrBackingRefused, name, why)
	}
	switch {
	case name == "" || strings.IndexByte(name, 0) >= 0:
		return refuse("is not a usable file name")
	case strings.Contains(name, "://"):
		return refuse("is a URI")
	case filepath.IsAbs(name):
		return refuse("is an absolute path")
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return refuse(`has a ".." component`)
		}
	}
	return filepath.Join(dir, name), nil
}

// resolve interprets a backing file name as QEMU does: relative to the
// directory of the image that names it.
func resolve(dir, name string) string {
	if filepath.IsAbs(name) || strings.Contains(name, "://") {
		return name
	}
	return filepath.Join(dir, name)
}

// CreateOptions describe a new image.
type CreateOptions struct {
	Format        string // raw or qcow2 (default qcow2)
	Size          int64  // -1: the backing file's size
	BackingFile   string // qcow2 only; recorded as given
	BackingFormat string // "" to probe
	ClusterSize   int
	Compat        string // qcow2: "1.1" (default) or "0.10"
	RefcountBits  int
	// AllowBacking lifts the confinement (see OpenOptions) for the backing
	// file's own backing chain. BackingFile itself, given by the user, is
	// followed as given.
	AllowBacking bool
}

// Create makes a new image file at path (replacing any file there).
func Create(path string, opts CreateOptions) error {
	if opts.Format == "" {
		opts.Format = Qcow2
	}
	if err := CheckFormat(opts.Format); err != nil {
		return err
	}
	if opts.Format == Raw && opts.BackingFile != "" {
		return errors.New("raw images cannot have a backing file")
	}
	if opts.Format == Raw && (opts.ClusterSize != 0 || opts.Compat != "" || opts.RefcountBits != 0) {
		return errors.New("cluster size, compat and refcount bits apply to qcow2 images only")
	}
	// Never truncate an image someone is using.
	if f, err := raw.Open(path, raw.Options{Lock: true}); err == nil {
		f.Close()
	} else if errors.Is(err, raw.ErrLocked) {
		return err
	}
	if opts.BackingFile != "" {
		full := resolve(filepath.Dir(path), opts.BackingFile)
		b, err := open(full, OpenOptions{Format: opts.BackingFormat, ReadOnly: true, Lock: true, AllowBacking: opts.AllowBacking}, 1)
		if err != nil {
			return fmt.Errorf("backing file %q: %w", opts.BackingFile, err)
		}
		if opts.BackingFormat == "" {
			opts.BackingFormat = formatOf(b)
		}
		if opts.Size < 0 {
			opts.Size = b.Size()
		}
		b.Close()
	}
	if opts.Size < 0 {
		return errors.New("an image size is needed (or a backing file to take it from)")
	}
	if opts.Format == Raw {
		f, err := raw.Create(path, opts.Size, raw.Options{Lock: true})
		if err != nil {
			return err
		}
		return f.Close()
	}
	ver := 3
	switch opts.Compat {
	case "", "1.1", "v3":
	case "0.10", "v2":
		ver = 2
	default:
		return fmt.Errorf("unknown qcow2 compat level %q (want 1.1 or 0.10)", opts.Compat)
	}
	f, err := raw.Create(path, 0, raw.Options{Lock: true})
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	img, err := qcow2.Create(f, opts.Size, qcow2.CreateOptions{
		ClusterSize: opts.ClusterSize, Version: ver, RefcountBits: opts.RefcountBits,
		BackingFile: opts.BackingFile, BackingFormat: opts.BackingFormat,
	}, qcow2.Options{OpenBacking: func(name, format string) (block.Backend, error) {
		return open(resolve(dir, name), OpenOptions{Format: format, ReadOnly: true, Lock: true, AllowBacking: opts.AllowBacking}, 1)
	}})
	if err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return img.Close()
}

func formatOf(b block.Backend) string {
	if _, ok := b.(*qcow2.Image); ok {
		return Qcow2
	}
	return Raw
}

// ParseSize parses sizes as qemu-img does: a number of bytes, optionally
// with a fraction, followed by an optional binary suffix K, M, G, T, P, E
// (either case, optionally followed by "B" or "iB").
func ParseSize(s string) (int64, error) {
	bad := fmt.Errorf("invalid size %q: want a number with an optional K, M, G, T, P or E suffix, like 512M or 10G", s)
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "iB"), "B")
	if t == "" || t[0] < '0' || t[0] > '9' {
		return 0, bad
	}
	mult := 1.0
	if i := strings.IndexAny(t[len(t)-1:], "kKmMgGtTpPeE"); i == 0 {
		mult = map[byte]float64{'k': 1 << 10, 'm': 1 << 20, 'g': 1 << 30, 't': 1 << 40, 'p': 1 << 50, 'e': 1 << 60}[strings.ToLower(t[len(t)-1:])[0]]
		t = t[:len(t)-1]
	}
	if n, err := strconv.ParseInt(t, 10, 64); err == nil && n >= 0 {
		if float64(n)*mult >= 1<<63 {
			return 0, fmt.Errorf("invalid size %q: too large", s)
		}
		return n * int64(mult), nil
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || strings.ContainsAny(t, "eExXpP+-") || mult == 1 {
		return 0, bad
	}
	if v*mult >= 1<<63 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return int64(v * mult), nil
}
