// Package partition reads a disk's partition table: GPT (primary header,
// or the backup when the primary is damaged) and MBR with extended
// partitions. It only reads; the disk is untrusted, so every count, size
// and offset is checked against the disk and fixed limits, and chains of
// extended boot records are bounded.
package partition

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"unicode/utf16"
)

// Scheme names a partition table's kind, as GRUB spells it in device
// names such as (hd0,gpt2) and (hd0,msdos1).
type Scheme string

const (
	GPT Scheme = "gpt"
	MBR Scheme = "msdos"
)

// Partition is one partition.
type Partition struct {
	// Number is the partition's number as Linux and GRUB count them:
	// GPT entries from 1 in table order (empty entries keep their
	// numbers), MBR primaries 1-4 and logical partitions from 5.
	Number int
	Start  int64 // bytes from the start of the disk
	Size   int64 // bytes
	// Type is the GPT type GUID (upper case, as the UEFI spec prints it)
	// or the MBR type byte as two hex digits.
	Type string
	Name string // GPT partition name
	// UUID is the GPT unique partition GUID, or the MBR form
	// "SSSSSSSS-NN" (disk signature and number), as root=PARTUUID= takes it.
	UUID string
}

// Known partition types.
const (
	TypeESP   = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	TypeLinux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
)

// ErrNoTable is matched when the disk has no partition table (a bare file
// system, say).
var ErrNoTable = errors.New("no partition table")

// ErrCorrupt is matched by tables that are present but invalid.
var ErrCorrupt = errors.New("corrupt partition table")

// Limits.
const (
	maxGPTEntries = 1024
	maxLogical    = 128
	sectorSize    = 512
)

// Read returns the partitions of the disk that r holds (size bytes), in
// number order.
func Read(r io.ReaderAt, size int64) (Scheme, []Partition, error) {
	var mbr [sectorSize]byte
	if size < sectorSize*2 {
		return "", nil, ErrNoTable
	}
	if _, err := r.ReadAt(mbr[:], 0); err != nil {
		return "", nil, fmt.Errorf("partition: reading sector 0: %w", err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		// A GPT disk whose protective MBR was wiped still has its header.
		if ps, err := readGPT(r, size); err == nil {
			return GPT, ps, nil
		}
		return "", nil, ErrNoTable
	}
	for i := 0; i < 4; i++ {
		if mbr[446+i*16+4] == 0xEE {
			ps, err := readGPT(r, size)
			if err != nil {
				return "", nil, err
			}
			return GPT, ps, nil
		}
	}
	ps, err := readMBR(r, size, mbr[:])
	if err != nil {
		return "", nil, err
	}
	return MBR, ps, nil
}

// readGPT reads the primary GPT, or the backup at the disk's last sector
// if the primary does not check out.
func readGPT(r io.ReaderAt, size int64) ([]Partition, error) {
	ps, err := readGPTAt(r, size, 1)
	if err == nil {
		return ps, nil
	}
	if ps2, err2 := readGPTAt(r, size, size/sectorSize-1); err2 == nil {
		return ps2, nil
	}
	return nil, err
}

func readGPTAt(r io.ReaderAt, size, lba int64) ([]Partition, error) {
	var h [sectorSize]byte
	if _, err := r.ReadAt(h[:], lba*sectorSize); err != nil {
		return nil, fmt.Errorf("partition: reading the GPT header at sector %d: %w", lba, err)
	}
	if string(h[:8]) != "EFI PART" {
		return nil, fmt.Errorf("%w: no GPT header at sector %d", ErrCorrupt, lba)
	}
	le := binary.LittleEndian
	hsize := le.Uint32(h[12:])
	if hsize < 92 || hsize > sectorSize {
		return nil, fmt.Errorf("%w: GPT header size %d", ErrCorrupt, hsize)
	}
	want := le.Uint32(h[16:])
	hb := append([]byte(nil), h[:hsize]...)
	clear(hb[16:20])
	if crc32.ChecksumIEEE(hb) != want {
		return nil, fmt.Errorf("%w: GPT header checksum mismatch at sector %d", ErrCorrupt, lba)
	}
	sectors := uint64(size / sectorSize)
	entLBA, n, esize := le.Uint64(h[72:]), le.Uint32(h[80:]), le.Uint32(h[84:])
	if n > maxGPTEntries || esize < 128 || esize > 4096 || esize%8 != 0 {
		return nil, fmt.Errorf("%w: %d GPT entries of %d bytes", ErrCorrupt, n, esize)
	}
	tbytes := uint64(n) * uint64(esize)
	if entLBA >= sectors || (sectors-entLBA)*sectorSize < tbytes {
		return nil, fmt.Errorf("%w: GPT entries at sector %d beyond the disk", ErrCorrupt, entLBA)
	}
	tbl := make([]byte, tbytes)
	if _, err := r.ReadAt(tbl, int64(entLBA)*sectorSize); err != nil {
		return nil, fmt.Errorf("partition: reading GPT entries: %w", err)
	}
	if crc32.ChecksumIEEE(tbl) != le.Uint32(h[88:]) {
		return nil, fmt.Errorf("%w: GPT entry array checksum mismatch", ErrCorrupt)
	}
	var ps []Partition
	for i := uint32(0); i < n; i++ {
		e := tbl[i*esize:]
		if allZero(e[:16]) {
			continue
		}
		first, last := le.Uint64(e[32:]), le.Uint64(e[40:])
		if last < first || last >= sectors {
			return nil, fmt.Errorf("%w: GPT partition %d spans sectors %d-%d of %d", ErrCorrupt, i+1, first, last, sectors)
		}
		u16 := make([]uint16, 0, 36)
		for j := 0; j < 72; j += 2 {
			c := le.Uint16(e[56+j:])
			if c == 0 {
				break
			}
			u16 = append(u16, c)
		}
		ps = append(ps, Partition{
			Number: int(i) + 1,
			Start:  int64(first) * sectorSize,
			Size:   int64(last-first+1) * sectorSize,
			Type:   guid(e[0:16]),
			UUID:   lowerGUID(e[16:32]),
			Name:   string(utf16.Decode(u16)),
		})
	}
	return ps, nil
}

// guid formats a GUID stored mixed-endian, as GPT stores them.
func guid(b []byte) string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08X-%04X-%04X-%X-%X", le.Uint32(b[0:]), le.Uint16(b[4:]), le.Uint16(b[6:]), b[8:10], b[10:16])
}

func lowerGUID(b []byte) string { return string(bytes.ToLower([]byte(guid(b)))) }

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func isExtended(t byte) bool { return t == 0x05 || t == 0x0F || t == 0x85 }

// readMBR reads the four primary entries and the chain of extended boot
// records behind an extended partition.
func readMBR(r io.ReaderAt, size int64, mbr []byte) ([]Partition, error) {
	le := binary.LittleEndian
	sig := le.Uint32(mbr[440:])
	sectors := uint64(size / sectorSize)
	var ps []Partition
	add := func(num int, t byte, start, count uint64) error {
		if start == 0 || count == 0 || start >= sectors || sectors-start < count {
			return fmt.Errorf("%w: MBR partition %d spans sectors %d+%d of %d", ErrCorrupt, num, start, count, sectors)
		}
		ps = append(ps, Partition{
			Number: num, Start: int64(start) * sectorSize, Size: int64(count) * sectorSize,
			Type: fmt.Sprintf("%02X", t), UUID: fmt.Sprintf("%08x-%02x", sig, num),
		})
		return nil
	}
	var ext uint64
	extCount := uint64(0)
	for i := 0; i < 4; i++ {
		e := mbr[446+i*16:]
		if e[0] != 0 && e[0] != 0x80 {
			return nil, fmt.Errorf("%w: MBR entry %d has boot flag %#x", ErrCorrupt, i+1, e[0])
		}
		t := e[4]
		start, count := uint64(le.Uint32(e[8:])), uint64(le.Uint32(e[12:]))
		if t == 0 {
			continue
		}
		if isExtended(t) {
			if ext != 0 {
				return nil, fmt.Errorf("%w: two extended partitions", ErrCorrupt)
			}
			if start == 0 || start >= sectors || sectors-start < count {
				return nil, fmt.Errorf("%w: extended partition beyond the disk", ErrCorrupt)
			}
			ext, extCount = start, count
			continue
		}
		if err := add(i+1, t, start, count); err != nil {
			return nil, err
		}
	}
	if ext == 0 {
		if len(ps) == 0 {
			return nil, ErrNoTable
		}
		return ps, nil
	}
	// Each EBR describes one logical partition (relative to itself) and
	// the next EBR (relative to the extended partition's start).
	ebr := ext
	seen := map[uint64]bool{}
	var b [sectorSize]byte
	for num := 5; ; num++ {
		if num-4 > maxLogical || seen[ebr] {
			return nil, fmt.Errorf("%w: chain of extended boot records loops or is longer than %d", ErrCorrupt, maxLogical)
		}
		seen[ebr] = true
		if ebr >= sectors {
			return nil, fmt.Errorf("%w: extended boot record at sector %d beyond the disk", ErrCorrupt, ebr)
		}
		if _, err := r.ReadAt(b[:], int64(ebr)*sectorSize); err != nil {
			return nil, fmt.Errorf("partition: reading an extended boot record: %w", err)
		}
		if b[510] != 0x55 || b[511] != 0xAA {
			return nil, fmt.Errorf("%w: extended boot record at sector %d has no signature", ErrCorrupt, ebr)
		}
		e1, e2 := b[446:], b[462:]
		if t := e1[4]; t != 0 {
			if err := add(num, t, ebr+uint64(le.Uint32(e1[8:])), uint64(le.Uint32(e1[12:]))); err != nil {
				return nil, err
			}
		}
		next := uint64(le.Uint32(e2[8:]))
		if e2[4] == 0 || next == 0 {
			break
		}
		if next >= extCount {
			return nil, fmt.Errorf("%w: extended boot record beyond its extended partition", ErrCorrupt)
		}
		ebr = ext + next
	}
	return ps, nil
}
