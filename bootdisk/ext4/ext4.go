// Package ext4 reads files from an ext2/ext3/ext4 file system, read-only,
// for finding a disk image's kernel and boot configuration. It understands
// the superblock, group descriptors (32- and 64-bit), inodes, extent trees
// and the older block maps, linear directories (htree directories are read
// linearly, which their format allows) and symbolic links.
//
// The image is untrusted: every size, offset, count and chain read from it
// is checked against the file system's geometry and against fixed limits,
// and a violation is an error (wrapping ErrCorrupt), never a panic, a huge
// allocation or an endless loop. Nothing is ever written.
package ext4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// Errors matched with errors.Is.
var (
	ErrNotExt4      = errors.New("not an ext2/3/4 file system")
	ErrCorrupt      = errors.New("corrupt ext4 metadata")
	ErrUnsupported  = errors.New("unsupported ext4 feature")
	ErrNotFound     = errors.New("no such file")
	ErrTooBig       = errors.New("file too big")
	ErrNotRegular   = errors.New("not a regular file")
	ErrTooManyLinks = errors.New("too many levels of symbolic links")
)

// Limits on what a hostile image can make the reader do.
const (
	maxDirSize     = 16 << 20 // bytes of one directory scanned in a lookup
	maxSymlink     = 4096     // PATH_MAX
	maxLinks       = 40       // symlinks followed in one resolution (Linux's limit)
	maxExtentDepth = 5        // the kernel's limit
	maxExtents     = 1 << 16  // runs of one file kept in memory
	maxExtentNodes = 1024     // extent-tree blocks read for one file
	maxPathParts   = 256
)

const (
	superOffset = 1024
	magic       = 0xEF53

	incompatCompression = 0x1
	incompatFiletype    = 0x2
	incompatJournalDev  = 0x8
	incompatMetaBG      = 0x10
	incompat64bit       = 0x80
	incompatDirdata     = 0x1000

	inodeFlagExtents = 0x80000
	inodeFlagInline  = 0x10000000
	inodeFlagEncrypt = 0x800

	modeTypeMask = 0xF000
	modeDir      = 0x4000
	modeRegular  = 0x8000
	modeSymlink  = 0xA000

	rootInode = 2
)

// FS is an open file system. Its methods may be called concurrently.
type FS struct {
	r          io.ReaderAt
	blockSize  int64
	blocks     uint64 // s_blocks_count
	firstData  uint64
	perGroup   uint64 // blocks per group
	inodesPG   uint64
	inodes     uint64
	inodeSize  int64
	descSize   int64
	groups     uint64
	gdtBlock   uint64 // first block of the group descriptor table
	incompat   uint32
	uuid       [16]byte
	label      string
	needsRecov bool
}

// Open reads the superblock of the file system that r holds (size bytes).
func Open(r io.ReaderAt, size int64) (*FS, error) {
	var sb [1024]byte
	if size < superOffset+int64(len(sb)) {
		return nil, ErrNotExt4
	}
	if _, err := r.ReadAt(sb[:], superOffset); err != nil {
		return nil, fmt.Errorf("ext4: reading the superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != magic {
		return nil, ErrNotExt4
	}
	f := &FS{r: r}
	logBS := le.Uint32(sb[0x18:])
	if logBS > 6 { // 1 KiB << 6 = 64 KiB, the largest ext4 allows
		return nil, fmt.Errorf("%w: block size 1024<<%d", ErrCorrupt, logBS)
	}
	f.blockSize = 1024 << logBS
	f.incompat = le.Uint32(sb[0x60:])
	f.blocks = uint64(le.Uint32(sb[0x4:]))
	if f.incompat&incompat64bit != 0 {
		f.blocks |= uint64(le.Uint32(sb[0x150:])) << 32
	}
	f.firstData = uint64(le.Uint32(sb[0x14:]))
	f.perGroup = uint64(le.Uint32(sb[0x20:]))
	f.inodesPG = uint64(le.Uint32(sb[0x28:]))
	f.inodes = uint64(le.Uint32(sb[0x0:]))
	copy(f.uuid[:], sb[0x68:0x78])
	f.label = strings.TrimRight(string(sb[0x78:0x88]), "\x00")
	f.needsRecov = f.incompat&0x4 != 0
	rev := le.Uint32(sb[0x4c:])
	f.inodeSize = 128
	if rev >= 1 {
		f.inodeSize = int64(le.Uint16(sb[0x58:]))
	}
	f.descSize = 32
	if f.incompat&incompat64bit != 0 {
		f.descSize = int64(le.Uint16(sb[0xfe:]))
	}
	bits := uint64(f.blockSize) * 8
	switch {
	case f.inodeSize < 128 || f.inodeSize > f.blockSize || f.inodeSize&(f.inodeSize-1) != 0:
		return nil, fmt.Errorf("%w: inode size %d", ErrCorrupt, f.inodeSize)
	case f.descSize < 32 || f.descSize > 1024 || f.descSize&(f.descSize-1) != 0:
		return nil, fmt.Errorf("%w: group descriptor size %d", ErrCorrupt, f.descSize)
	case f.perGroup == 0 || f.perGroup > bits:
		return nil, fmt.Errorf("%w: %d blocks per group", ErrCorrupt, f.perGroup)
	case f.inodesPG == 0 || f.inodesPG > bits:
		return nil, fmt.Errorf("%w: %d inodes per group", ErrCorrupt, f.inodesPG)
	case f.blocks <= f.firstData || f.firstData > 1:
		return nil, fmt.Errorf("%w: %d blocks, first data block %d", ErrCorrupt, f.blocks, f.firstData)
	case f.blocks > uint64(size)/uint64(f.blockSize):
		return nil, fmt.Errorf("%w: the file system claims %d blocks of %d bytes but its device holds %d bytes", ErrCorrupt, f.blocks, f.blockSize, size)
	}
	f.groups = (f.blocks - f.firstData + f.perGroup - 1) / f.perGroup
	if f.inodes > f.groups*f.inodesPG {
		return nil, fmt.Errorf("%w: %d inodes in %d groups of %d", ErrCorrupt, f.inodes, f.groups, f.inodesPG)
	}
	f.gdtBlock = f.firstData + 1
	if un := f.incompat &^ (incompatFiletype | 0x4 | 0x40 | incompat64bit | 0x100 | 0x200 | 0x400 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000); un != 0 {
		return nil, fmt.Errorf("%w: incompatible features %#x (%s)", ErrUnsupported, un, featureNames(un))
	}
	return f, nil
}

func featureNames(f uint32) string {
	var n []string
	for bit, name := range map[uint32]string{incompatCompression: "compression", incompatJournalDev: "external journal device", incompatMetaBG: "meta_bg", incompatDirdata: "dirdata"} {
		if f&bit != 0 {
			n = append(n, name)
		}
	}
	sort.Strings(n)
	if len(n) == 0 {
		return "unknown"
	}
	return strings.Join(n, ", ")
}

// UUID returns the file system's UUID in its usual text form (what
// root=UUID= and GRUB's search --fs-uuid use).
func (f *FS) UUID() string {
	u := f.uuid
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// Label returns the volume label.
func (f *FS) Label() string { return f.label }

// NeedsRecovery reports whether the journal holds transactions that were
// never written back: files read now may be older than the guest last saw.
func (f *FS) NeedsRecovery() bool { return f.needsRecov }

// readFull reads exactly len(p) bytes at off.
func (f *FS) readFull(p []byte, off int64) error {
	n, err := f.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("ext4: reading %d bytes at %d: %w", len(p), off, err)
}

// blockOff returns the byte offset of block b after checking it is inside
// the file system.
func (f *FS) blockOff(b uint64) (int64, error) {
	if b >= f.blocks {
		return 0, fmt.Errorf("%w: block %d beyond the file system's %d", ErrCorrupt, b, f.blocks)
	}
	return int64(b) * f.blockSize, nil
}

// inode is the part of an on-disk inode the reader uses.
type inode struct {
	num   uint64
	mode  uint16
	flags uint32
	size  int64
	block [60]byte
}

func (f *FS) readInode(n uint64) (*inode, error) {
	if n == 0 || n > f.inodes {
		return nil, fmt.Errorf("%w: inode %d out of range 1-%d", ErrCorrupt, n, f.inodes)
	}
	g, idx := (n-1)/f.inodesPG, (n-1)%f.inodesPG
	if g >= f.groups {
		return nil, fmt.Errorf("%w: inode %d in group %d of %d", ErrCorrupt, n, g, f.groups)
	}
	descPerBlock := uint64(f.blockSize / f.descSize)
	doff, err := f.blockOff(f.gdtBlock + g/descPerBlock)
	if err != nil {
		return nil, err
	}
	desc := make([]byte, f.descSize)
	if err := f.readFull(desc, doff+int64(g%descPerBlock)*f.descSize); err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	table := uint64(le.Uint32(desc[0x8:]))
	if f.descSize >= 64 {
		table |= uint64(le.Uint32(desc[0x28:])) << 32
	}
	tableBytes := f.inodesPG * uint64(f.inodeSize)
	tableBlocks := (tableBytes + uint64(f.blockSize) - 1) / uint64(f.blockSize)
	if table >= f.blocks || f.blocks-table < tableBlocks {
		return nil, fmt.Errorf("%w: inode table of group %d at block %d", ErrCorrupt, g, table)
	}
	raw := make([]byte, 128)
	if err := f.readFull(raw, int64(table)*f.blockSize+int64(idx)*f.inodeSize); err != nil {
		return nil, err
	}
	in := &inode{num: n, mode: le.Uint16(raw[0:]), flags: le.Uint32(raw[0x20:])}
	size := uint64(le.Uint32(raw[0x4:])) | uint64(le.Uint32(raw[0x6c:]))<<32
	if size > 1<<62 {
		return nil, fmt.Errorf("%w: inode %d claims %d bytes", ErrCorrupt, n, size)
	}
	in.size = int64(size)
	copy(in.block[:], raw[0x28:0x28+60])
	return in, nil
}

// run maps length blocks of a file from logical block lblk to physical
// block pblk; zero marks a hole or an unwritten extent (reads as zeroes).
type run struct {
	lblk, pblk, length uint64
	zero               bool
}

// runs returns the block runs of in's data, sorted by logical block,
// covering at most the blocks its size needs.
func (f *FS) runs(in *inode) ([]run, error) {
	if in.flags&inodeFlagInline != 0 {
		return nil, fmt.Errorf("%w: inode %d keeps its data inline (inline_data)", ErrUnsupported, in.num)
	}
	if in.flags&inodeFlagEncrypt != 0 {
		return nil, fmt.Errorf("%w: inode %d is encrypted", ErrUnsupported, in.num)
	}
	need := (uint64(in.size) + uint64(f.blockSize) - 1) / uint64(f.blockSize)
	var rs []run
	var err error
	if in.flags&inodeFlagExtents != 0 {
		budget := walkBudget{entries: maxExtents, nodes: maxExtentNodes}
		rs, err = f.extentRuns(in.block[:], need, 0, &budget, nil)
	} else {
		rs, err = f.mapRuns(in, need)
	}
	if err != nil {
		return nil, fmt.Errorf("inode %d: %w", in.num, err)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].lblk < rs[j].lblk })
	for i := 1; i < len(rs); i++ {
		if rs[i-1].lblk+rs[i-1].length > rs[i].lblk {
			return nil, fmt.Errorf("%w: inode %d has overlapping extents", ErrCorrupt, in.num)
		}
	}
	return rs, nil
}

// walkBudget bounds the work of one extent-tree walk: entries looked at
// and blocks read. It also stops cycles.
type walkBudget struct{ entries, nodes int }

// extentRuns walks one extent-tree node (the 60 bytes of i_block or a
// whole block) and appends its leaves' runs.
func (f *FS) extentRuns(node []byte, need uint64, depth int, budget *walkBudget, rs []run) ([]run, error) {
	le := binary.LittleEndian
	if len(node) < 12 || le.Uint16(node[0:]) != 0xF30A {
		return nil, fmt.Errorf("%w: bad extent header", ErrCorrupt)
	}
	entries, max, d := int(le.Uint16(node[2:])), int(le.Uint16(node[4:])), int(le.Uint16(node[6:]))
	if entries > max || 12+entries*12 > len(node) || depth+d > maxExtentDepth {
		return nil, fmt.Errorf("%w: extent node with %d of %d entries, depth %d", ErrCorrupt, entries, max, d)
	}
	for i := 0; i < entries; i++ {
		budget.entries--
		if budget.entries < 0 {
			return nil, fmt.Errorf("%w: more than %d extents", ErrTooBig, maxExtents)
		}
		e := node[12+i*12:]
		lblk := uint64(le.Uint32(e[0:]))
		if d == 0 {
			length := uint64(le.Uint16(e[4:]))
			zero := false
			if length > 32768 {
				length -= 32768
				zero = true
			}
			pblk := uint64(le.Uint16(e[6:]))<<32 | uint64(le.Uint32(e[8:]))
			if length == 0 || lblk >= need {
				continue
			}
			length = min(length, need-lblk)
			if !zero && (pblk >= f.blocks || f.blocks-pblk < length) {
				return nil, fmt.Errorf("%w: extent at block %d+%d beyond the file system", ErrCorrupt, pblk, length)
			}
			rs = append(rs, run{lblk: lblk, pblk: pblk, length: length, zero: zero})
			continue
		}
		budget.nodes--
		if budget.nodes < 0 {
			return nil, fmt.Errorf("%w: more than %d extent-tree blocks", ErrTooBig, maxExtentNodes)
		}
		child := uint64(le.Uint16(e[8:]))<<32 | uint64(le.Uint32(e[4:]))
		off, err := f.blockOff(child)
		if err != nil {
			return nil, err
		}
		blk := make([]byte, f.blockSize)
		if err := f.readFull(blk, off); err != nil {
			return nil, err
		}
		if le.Uint16(blk[6:]) != uint16(d-1) {
			return nil, fmt.Errorf("%w: extent node at depth %d below one of depth %d", ErrCorrupt, le.Uint16(blk[6:]), d)
		}
		if rs, err = f.extentRuns(blk, need, depth+1, budget, rs); err != nil {
			return nil, err
		}
	}
	return rs, nil
}

// mapRuns reads an ext2/ext3-style block map: 12 direct blocks, then
// single, double and triple indirect blocks.
func (f *FS) mapRuns(in *inode, need uint64) ([]run, error) {
	if need > maxExtents*64 {
		return nil, fmt.Errorf("%w: %d blocks in a block-mapped file", ErrTooBig, need)
	}
	le := binary.LittleEndian
	var rs []run
	add := func(lblk, pblk uint64) error {
		if pblk == 0 {
			return nil // a hole
		}
		if pblk >= f.blocks {
			return fmt.Errorf("%w: block %d beyond the file system", ErrCorrupt, pblk)
		}
		if n := len(rs); n > 0 && rs[n-1].lblk+rs[n-1].length == lblk && rs[n-1].pblk+rs[n-1].length == pblk {
			rs[n-1].length++
			return nil
		}
		if len(rs) >= maxExtents {
			return fmt.Errorf("%w: more than %d runs", ErrTooBig, maxExtents)
		}
		rs = append(rs, run{lblk: lblk, pblk: pblk, length: 1})
		return nil
	}
	perBlock := uint64(f.blockSize / 4)
	var lblk uint64
	var walk func(pblk uint64, level int) error
	walk = func(pblk uint64, level int) error {
		if level == 0 {
			err := add(lblk, pblk)
			lblk++
			return err
		}
		span := uint64(1)
		for i := 1; i < level; i++ {
			span *= perBlock
		}
		if pblk == 0 {
			lblk += span * perBlock
			return nil
		}
		off, err := f.blockOff(pblk)
		if err != nil {
			return err
		}
		blk := make([]byte, f.blockSize)
		if err := f.readFull(blk, off); err != nil {
			return err
		}
		for i := uint64(0); i < perBlock && lblk < need; i++ {
			if err := walk(uint64(le.Uint32(blk[i*4:])), level-1); err != nil {
				return err
			}
		}
		return nil
	}
	for i := 0; i < 15 && lblk < need; i++ {
		level := 0
		if i >= 12 {
			level = i - 11
		}
		if err := walk(uint64(le.Uint32(in.block[i*4:])), level); err != nil {
			return nil, err
		}
	}
	return rs, nil
}

// File is an open regular file: an io.ReaderAt over its contents.
type File struct {
	fs   *FS
	size int64
	runs []run
}

var _ io.ReaderAt = (*File)(nil)

// Size returns the file's length in bytes.
func (fl *File) Size() int64 { return fl.size }

// ReadAt reads the file's bytes at off, as io.ReaderAt: holes and
// unwritten extents read as zeroes.
func (fl *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("ext4: negative offset %d", off)
	}
	if off >= fl.size {
		return 0, io.EOF
	}
	want := len(p)
	if rest := fl.size - off; int64(want) > rest {
		want = int(rest)
	}
	bs := fl.fs.blockSize
	done := 0
	for done < want {
		pos := off + int64(done)
		lblk := uint64(pos / bs)
		inBlk := pos % bs
		// The run holding lblk, or the first after it.
		i := sort.Search(len(fl.runs), func(i int) bool { return fl.runs[i].lblk+fl.runs[i].length > lblk })
		var n int64
		if i == len(fl.runs) || fl.runs[i].lblk > lblk {
			// A hole up to the next run (or the end).
			end := int64(fl.size)
			if i < len(fl.runs) {
				end = int64(fl.runs[i].lblk) * bs
			}
			n = min(end-pos, int64(want-done))
			clear(p[done : done+int(n)])
		} else {
			r := fl.runs[i]
			n = min(int64(r.lblk+r.length-lblk)*bs-inBlk, int64(want-done))
			if r.zero {
				clear(p[done : done+int(n)])
			} else {
				src := int64(r.pblk+(lblk-r.lblk))*bs + inBlk
				if err := fl.fs.readFull(p[done:done+int(n)], src); err != nil {
					return done, err
				}
			}
		}
		done += int(n)
	}
	if want < len(p) {
		return done, io.EOF
	}
	return done, nil
}

// Open opens the regular file at name (an absolute path; symbolic links
// are followed, absolute ones relative to this file system's root).
func (f *FS) Open(name string) (*File, error) {
	in, err := f.lookup(name, true)
	if err != nil {
		return nil, err
	}
	if in.mode&modeTypeMask != modeRegular {
		return nil, fmt.Errorf("%s: %w", name, ErrNotRegular)
	}
	rs, err := f.runs(in)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &File{fs: f, size: in.size, runs: rs}, nil
}

// ReadFile returns the contents of the regular file at name, refusing
// files longer than max bytes.
func (f *FS) ReadFile(name string, max int64) ([]byte, error) {
	fl, err := f.Open(name)
	if err != nil {
		return nil, err
	}
	if fl.size > max {
		return nil, fmt.Errorf("%s: %w: %d bytes, at most %d read", name, ErrTooBig, fl.size, max)
	}
	b := make([]byte, fl.size)
	if _, err := fl.ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return b, nil
}

// Exists reports whether name resolves to anything.
func (f *FS) Exists(name string) bool {
	_, err := f.lookup(name, true)
	return err == nil
}

// Resolve returns the path name leads to once every symbolic link in it
// is followed (for messages: /vmlinuz -> /boot/vmlinuz-6.1.0-13-amd64).
func (f *FS) Resolve(name string) (string, error) {
	_, p, err := f.resolve(name, true, new(int))
	return p, err
}

func (f *FS) lookup(name string, follow bool) (*inode, error) {
	in, _, err := f.resolve(name, follow, new(int))
	return in, err
}

// resolve walks name from the root; links counts the symbolic links
// followed so far over the whole resolution.
func (f *FS) resolve(name string, followLast bool, links *int) (*inode, string, error) {
	if !strings.HasPrefix(name, "/") {
		return nil, "", fmt.Errorf("ext4: path %q is not absolute", name)
	}
	parts := strings.Split(name, "/")
	if len(parts) > maxPathParts {
		return nil, "", fmt.Errorf("ext4: path %q has too many components", name)
	}
	cur, err := f.readInode(rootInode)
	if err != nil {
		return nil, "", err
	}
	curPath := "/"
	for i := 0; i < len(parts); i++ {
		p := parts[i]
		if p == "" || p == "." {
			continue
		}
		if cur.mode&modeTypeMask != modeDir {
			return nil, "", fmt.Errorf("%s: %s is not a directory: %w", name, curPath, ErrNotFound)
		}
		n, err := f.dirLookup(cur, p)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", name, err)
		}
		next, err := f.readInode(n)
		if err != nil {
			return nil, "", err
		}
		last := true
		for _, q := range parts[i+1:] {
			if q != "" && q != "." {
				last = false
				break
			}
		}
		if next.mode&modeTypeMask == modeSymlink && (!last || followLast) {
			*links++
			if *links > maxLinks {
				return nil, "", fmt.Errorf("%s: %w", name, ErrTooManyLinks)
			}
			target, err := f.readlink(next)
			if err != nil {
				return nil, "", fmt.Errorf("%s: %w", name, err)
			}
			if !strings.HasPrefix(target, "/") {
				target = path.Join(curPath, target)
			}
			rest := strings.Join(parts[i+1:], "/")
			return f.resolve(path.Join(target, rest)+trailingSlash(name), followLast, links)
		}
		cur = next
		curPath = path.Join(curPath, p)
	}
	return cur, path.Clean(curPath), nil
}

func trailingSlash(name string) string {
	if strings.HasSuffix(name, "/") {
		return "/"
	}
	return ""
}

func (f *FS) readlink(in *inode) (string, error) {
	if in.size <= 0 || in.size > maxSymlink {
		return "", fmt.Errorf("%w: symbolic link of %d bytes", ErrCorrupt, in.size)
	}
	// A fast symlink keeps its target in i_block (as does an inline one
	// that short).
	if in.size < 60 && in.flags&inodeFlagExtents == 0 {
		return string(in.block[:in.size]), nil
	}
	rs, err := f.runs(in)
	if err != nil {
		return "", err
	}
	fl := &File{fs: f, size: in.size, runs: rs}
	b := make([]byte, in.size)
	if _, err := fl.ReadAt(b, 0); err != nil && err != io.EOF {
		return "", err
	}
	return string(b), nil
}

// dirLookup finds name in directory dir, scanning its blocks linearly.
func (f *FS) dirLookup(dir *inode, name string) (uint64, error) {
	if dir.size > maxDirSize {
		return 0, fmt.Errorf("%w: directory inode %d of %d bytes", ErrTooBig, dir.num, dir.size)
	}
	rs, err := f.runs(dir)
	if err != nil {
		return 0, err
	}
	fl := &File{fs: f, size: dir.size, runs: rs}
	le := binary.LittleEndian
	blk := make([]byte, f.blockSize)
	for off := int64(0); off < dir.size; off += f.blockSize {
		n, err := fl.ReadAt(blk, off)
		if err != nil && err != io.EOF {
			return 0, err
		}
		b := blk[:n]
		for pos := 0; pos+8 <= len(b); {
			ino := uint64(le.Uint32(b[pos:]))
			recLen := int(le.Uint16(b[pos+4:]))
			nameLen := int(b[pos+6])
			if f.incompat&incompatFiletype == 0 {
				nameLen = int(le.Uint16(b[pos+6:]))
			}
			if recLen < 8 || recLen%4 != 0 || pos+recLen > len(b) || 8+nameLen > recLen {
				return 0, fmt.Errorf("%w: directory inode %d entry at %d", ErrCorrupt, dir.num, off+int64(pos))
			}
			if ino != 0 && string(b[pos+8:pos+8+nameLen]) == name {
				return ino, nil
			}
			pos += recLen
		}
	}
	return 0, fmt.Errorf("%w: %q", ErrNotFound, name)
}
