// Package bootdisk finds what a distribution's disk image boots, without
// firmware or a boot loader: it reads the partition table (GPT or MBR, or
// none for a bare file system), opens the ext2/3/4 file systems on it,
// follows the default entry of GRUB's grub.cfg and, failing that, the
// /vmlinuz and /initrd.img links Debian-style distributions keep, and
// returns the kernel and initramfs as readers over the image together with
// the kernel command line the distribution meant.
//
// The image is untrusted (a guest writes it): package ext4, partition and
// grub bound everything they read, and Find bounds the sizes of what it
// returns.
package bootdisk

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/viovmm/vio/bootdisk/ext4"
	"github.com/viovmm/vio/bootdisk/grub"
	"github.com/viovmm/vio/bootdisk/partition"
)

// Default limits on what Find returns.
const (
	DefaultMaxKernel = 256 << 20
	DefaultMaxInitrd = 1 << 30
	maxGrubCfg       = 4 << 20
)

// Options bound what Find accepts. Zero fields take the defaults.
type Options struct {
	MaxKernel int64
	MaxInitrd int64 // all initrds together
}

// Boot is what a disk boots.
type Boot struct {
	Kernel     io.ReaderAt
	KernelSize int64
	Initrd     io.ReaderAt // nil: none
	InitrdSize int64
	// Cmdline is the distribution's kernel command line (grub.cfg's linux
	// arguments, or root=UUID=... ro for the links).
	Cmdline string
	// Source says where all this came from, for the log and messages:
	// `partition 1 (ext4): /boot/grub/grub.cfg entry "Debian GNU/Linux"`.
	Source     string
	KernelPath string
	InitrdPath string
	Notes      []string // things the user should know (a default that named no entry, a journal needing recovery)
}

// ErrNotBootable is matched when the disk has nothing Find can boot.
var ErrNotBootable = errors.New("nothing bootable found")

// volume is one file system on the disk.
type volume struct {
	dev  string // GRUB's name for it: hd0,gpt2, hd0,msdos1, hd0
	num  int    // partition number; 0 for the whole disk
	desc string
	fs   *ext4.FS
}

// Find looks at the disk r (size bytes) and returns what it boots.
func Find(r io.ReaderAt, size int64, o Options) (*Boot, error) {
	if o.MaxKernel <= 0 {
		o.MaxKernel = DefaultMaxKernel
	}
	if o.MaxInitrd <= 0 {
		o.MaxInitrd = DefaultMaxInitrd
	}
	vols, why, err := volumes(r, size)
	if err != nil {
		return nil, err
	}
	if len(vols) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotBootable, why)
	}
	d := &disk{vols: vols, opts: o}
	var grubErr error
	for _, v := range vols {
		for _, cfg := range []string{"/boot/grub/grub.cfg", "/grub/grub.cfg", "/boot/grub2/grub.cfg", "/grub2/grub.cfg"} {
			if !v.fs.Exists(cfg) {
				continue
			}
			b, err := d.fromGrub(v, cfg)
			if err == nil {
				return b, nil
			}
			if grubErr == nil {
				grubErr = fmt.Errorf("%s: %s: %w", v.desc, cfg, err)
			}
		}
	}
	b, linkErr := d.fromLinks()
	if linkErr == nil {
		if grubErr != nil {
			b.Notes = append(b.Notes, fmt.Sprintf("%v; booted the /vmlinuz links instead", grubErr))
		}
		return b, nil
	}
	if grubErr != nil {
		return nil, grubErr
	}
	return nil, linkErr
}

// volumes lists the disk's ext file systems, and says why there are none.
func volumes(r io.ReaderAt, size int64) ([]volume, string, error) {
	scheme, parts, err := partition.Read(r, size)
	if err != nil {
		if !errors.Is(err, partition.ErrNoTable) && !errors.Is(err, partition.ErrCorrupt) {
			return nil, "", err
		}
		// A bare file system, as vio's own test disks are.
		fs, ferr := ext4.Open(r, size)
		if ferr != nil {
			if errors.Is(err, partition.ErrCorrupt) {
				return nil, fmt.Sprintf("its partition table is unreadable (%v) and it holds no ext2/3/4 file system", err), nil
			}
			if errors.Is(ferr, ext4.ErrNotExt4) {
				return nil, "it has no partition table and no ext2/3/4 file system", nil
			}
			return nil, fmt.Sprintf("it has no partition table, and its ext2/3/4 file system cannot be read: %v", ferr), nil
		}
		return []volume{{dev: "hd0", desc: "the whole disk (ext4, no partition table)", fs: fs}}, "", nil
	}
	var vols []volume
	var skipped []string
	for _, p := range parts {
		fs, err := ext4.Open(io.NewSectionReader(r, p.Start, p.Size), p.Size)
		if err != nil {
			what := "no ext2/3/4 file system"
			if p.Type == partition.TypeESP {
				what = "an EFI system partition"
			} else if !errors.Is(err, ext4.ErrNotExt4) {
				what = err.Error()
			}
			skipped = append(skipped, fmt.Sprintf("%d (%s)", p.Number, what))
			continue
		}
		vols = append(vols, volume{
			dev:  fmt.Sprintf("hd0,%s%d", scheme, p.Number),
			num:  p.Number,
			desc: fmt.Sprintf("partition %d", p.Number),
			fs:   fs,
		})
	}
	if len(parts) == 0 {
		return nil, fmt.Sprintf("its %s partition table is empty", schemeName(scheme)), nil
	}
	return vols, fmt.Sprintf("none of its %s partitions holds an ext2/3/4 file system: %s", schemeName(scheme), strings.Join(skipped, ", ")), nil
}

func schemeName(s partition.Scheme) string {
	if s == partition.MBR {
		return "MBR"
	}
	return "GPT"
}

type disk struct {
	vols []volume
	opts Options
}

var _ grub.Searcher = (*disk)(nil)

// Search answers GRUB's search over the disk's file systems.
func (d *disk) Search(by, what string) (string, error) {
	for _, v := range d.vols {
		switch by {
		case "fs-uuid":
			if strings.EqualFold(v.fs.UUID(), what) {
				return v.dev, nil
			}
		case "label":
			if v.fs.Label() == what {
				return v.dev, nil
			}
		case "file":
			if v.fs.Exists(what) {
				return v.dev, nil
			}
		}
	}
	return "", fmt.Errorf("no ext2/3/4 file system on this disk matches")
}

// volumeOf maps a GRUB device name to one of the disk's file systems.
func (d *disk) volumeOf(dev string) (*volume, error) {
	parts := strings.Split(strings.Trim(dev, "()"), ",")
	if parts[0] != "hd0" {
		return nil, fmt.Errorf("%w: device (%s) is not this disk; vio reads the boot files from the disk they are on (hd0)", grub.ErrUnsupported, dev)
	}
	if len(parts) > 2 {
		return nil, fmt.Errorf("%w: device (%s) is a nested partition", grub.ErrUnsupported, dev)
	}
	num := 0
	if len(parts) == 2 {
		n, err := strconv.Atoi(strings.TrimLeft(parts[1], "abcdefghijklmnopqrstuvwxyz"))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("device (%s): bad partition %q", dev, parts[1])
		}
		num = n
	}
	for i := range d.vols {
		if d.vols[i].num == num {
			return &d.vols[i], nil
		}
	}
	if num == 0 {
		return nil, fmt.Errorf("device (%s) is the whole disk, which holds a partition table, not a file system", dev)
	}
	return nil, fmt.Errorf("device (%s): partition %d has no ext2/3/4 file system", dev, num)
}

func (d *disk) fromGrub(v volume, cfgPath string) (*Boot, error) {
	cfg, err := v.fs.ReadFile(cfgPath, maxGrubCfg)
	if err != nil {
		return nil, err
	}
	e, notes, err := grub.Default(cfg, v.dev, d)
	if err != nil {
		return nil, err
	}
	kv, err := d.volumeOf(e.Kernel.Device)
	if err != nil {
		return nil, fmt.Errorf("entry %q: kernel %s: %w", e.Title, e.Kernel, err)
	}
	b := &Boot{
		Cmdline: JoinArgs(e.Args),
		Source:  fmt.Sprintf("%s: %s entry %q", v.desc, cfgPath, e.Title),
		Notes:   notes,
	}
	if err := d.kernel(b, kv, e.Kernel.File); err != nil {
		return nil, fmt.Errorf("entry %q: %w", e.Title, err)
	}
	var readers []sizedReader
	var names []string
	var total int64
	for _, p := range e.Initrds {
		iv, err := d.volumeOf(p.Device)
		if err != nil {
			return nil, fmt.Errorf("entry %q: initrd %s: %w", e.Title, p, err)
		}
		f, err := iv.fs.Open(p.File)
		if err != nil {
			return nil, fmt.Errorf("entry %q: initrd %s on %s: %w", e.Title, p.File, iv.desc, err)
		}
		// GRUB starts each initrd on a 4-byte boundary (the kernel
		// reads the concatenated cpio archives that way); the gap is zeroes.
		if pad := (4 - total%4) % 4; pad != 0 {
			readers = append(readers, sizedReader{nil, pad})
			total += pad
		}
		total += f.Size()
		if total > d.opts.MaxInitrd {
			return nil, fmt.Errorf("entry %q: the initrds are more than %d MiB together", e.Title, d.opts.MaxInitrd>>20)
		}
		readers = append(readers, sizedReader{f, f.Size()})
		names = append(names, fmt.Sprintf("%s on %s", p.File, iv.desc))
	}
	if len(readers) > 0 {
		b.Initrd, b.InitrdSize = concat(readers), total
		b.InitrdPath = strings.Join(names, " + ")
	}
	d.noteRecovery(b, kv)
	return b, nil
}

func (d *disk) kernel(b *Boot, v *volume, file string) error {
	f, err := v.fs.Open(file)
	if err != nil {
		return fmt.Errorf("kernel %s on %s: %w", file, v.desc, err)
	}
	if f.Size() > d.opts.MaxKernel {
		return fmt.Errorf("kernel %s on %s is %d MiB, more than the %d MiB vio loads", file, v.desc, f.Size()>>20, d.opts.MaxKernel>>20)
	}
	if f.Size() == 0 {
		return fmt.Errorf("kernel %s on %s is empty", file, v.desc)
	}
	b.Kernel, b.KernelSize = f, f.Size()
	b.KernelPath = fmt.Sprintf("%s on %s", file, v.desc)
	if real, err := v.fs.Resolve(file); err == nil && real != file {
		b.KernelPath = fmt.Sprintf("%s (%s) on %s", file, real, v.desc)
	}
	return nil
}

func (d *disk) noteRecovery(b *Boot, v *volume) {
	if v.fs.NeedsRecovery() {
		b.Notes = append(b.Notes, fmt.Sprintf("the file system on %s was not cleanly unmounted (its journal needs recovery): the boot files read may be older than the guest last wrote", v.desc))
	}
}

// fromLinks boots /vmlinuz and /initrd.img (or the same under /boot) with
// root=UUID= of the volume that holds /etc.
func (d *disk) fromLinks() (*Boot, error) {
	root := &d.vols[0]
	for i := range d.vols {
		if d.vols[i].fs.Exists("/etc") {
			root = &d.vols[i]
			break
		}
	}
	for i := range d.vols {
		v := &d.vols[i]
		for _, pair := range [][2]string{{"/vmlinuz", "/initrd.img"}, {"/boot/vmlinuz", "/boot/initrd.img"}} {
			if !v.fs.Exists(pair[0]) {
				continue
			}
			b := &Boot{
				Cmdline: "root=UUID=" + root.fs.UUID() + " ro",
				Source:  fmt.Sprintf("%s: the %s link (no grub.cfg)", v.desc, pair[0]),
			}
			if err := d.kernel(b, v, pair[0]); err != nil {
				return nil, err
			}
			if f, err := v.fs.Open(pair[1]); err == nil {
				if f.Size() > d.opts.MaxInitrd {
					return nil, fmt.Errorf("initrd %s on %s is %d MiB, more than the %d MiB vio loads", pair[1], v.desc, f.Size()>>20, d.opts.MaxInitrd>>20)
				}
				b.Initrd, b.InitrdSize = f, f.Size()
				b.InitrdPath = fmt.Sprintf("%s on %s", pair[1], v.desc)
				if real, err := v.fs.Resolve(pair[1]); err == nil && real != pair[1] {
					b.InitrdPath = fmt.Sprintf("%s (%s) on %s", pair[1], real, v.desc)
				}
			} else {
				b.Notes = append(b.Notes, fmt.Sprintf("no %s next to %s: booting without an initramfs, so the kernel needs its disk and file system drivers built in and cannot resolve root=UUID=", pair[1], pair[0]))
			}
			d.noteRecovery(b, v)
			return b, nil
		}
	}
	var descs []string
	for _, v := range d.vols {
		descs = append(descs, v.desc)
	}
	return nil, fmt.Errorf("%w: no /boot/grub/grub.cfg and no /vmlinuz or /boot/vmlinuz on %s", ErrNotBootable, strings.Join(descs, ", "))
}

// JoinArgs joins kernel parameters into a command line, quoting the value
// of one that holds blanks (the kernel's parser honours key="a b").
func JoinArgs(args []string) string {
	var out []string
	for _, a := range args {
		if strings.ContainsAny(a, " \t") && !strings.Contains(a, `"`) {
			if k, v, ok := strings.Cut(a, "="); ok {
				a = k + `="` + v + `"`
			} else {
				a = `"` + a + `"`
			}
		}
		out = append(out, a)
	}
	return strings.Join(out, " ")
}

// Cmdline composes the command line vio passes: the image's own, then
// console=ttyS0 when the image names no console (so that the user sees the
// boot on vio's serial console), then extra (the user's own parameters).
func Cmdline(image, extra string) string {
	parts := []string{}
	if s := strings.TrimSpace(image); s != "" {
		parts = append(parts, s)
	}
	if !hasParam(image, "console") {
		parts = append(parts, "console=ttyS0")
	}
	if s := strings.TrimSpace(extra); s != "" {
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

func hasParam(cmdline, key string) bool {
	for _, f := range strings.Fields(cmdline) {
		if f == "--" {
			return false // the rest is init's
		}
		if k, _, _ := strings.Cut(f, "="); k == key {
			return true
		}
	}
	return false
}

type sizedReader struct {
	r    io.ReaderAt
	size int64
}

// concat joins readers end to end, as GRUB concatenates several initrds
// (a microcode archive and the initramfs, say) into one.
func concat(rs []sizedReader) io.ReaderAt {
	if len(rs) == 1 {
		return rs[0].r
	}
	return multiReaderAt(rs)
}

type multiReaderAt []sizedReader

func (m multiReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("bootdisk: negative offset")
	}
	done := 0
	for _, r := range m {
		if done == len(p) {
			break
		}
		if off >= r.size {
			off -= r.size
			continue
		}
		n := int(min(int64(len(p)-done), r.size-off))
		if r.r == nil {
			clear(p[done : done+n])
			done += n
			off = 0
			continue
		}
		if k, err := r.r.ReadAt(p[done:done+n], off); k < n {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return done + k, err
		}
		done += n
		off = 0
	}
	if done < len(p) {
		return done, io.EOF
	}
	return done, nil
}
