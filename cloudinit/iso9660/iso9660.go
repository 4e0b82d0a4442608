// Package iso9660 writes a small ISO 9660 image: one root directory of
// regular files, with Rock Ridge (RRIP 1.10) names and modes so that
// Linux's isofs shows the files under their real names (user-data,
// meta-data, ...), which plain ISO 9660 file identifiers cannot spell.
// It is what cloud-init's NoCloud seed needs and nothing more: no
// subdirectories, no Joliet, no El Torito.
package iso9660

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// File is one file of the root directory.
type File struct {
	Name string // the Rock Ridge name: 1-64 bytes, no '/' or NUL
	Data []byte
}

// Limits.
const (
	sector    = 2048
	MaxFiles  = 32
	MaxSize   = 64 << 20 // all files together
	maxName   = 64
	rootLBA   = 20
	firstData = 21
)

// Write returns the image of a volume labelled label (the primary volume
// identifier, at most 32 bytes; blkid reports it as LABEL) holding files,
// with every timestamp set to t.
func Write(label string, files []File, t time.Time) ([]byte, error) {
	if len(label) > 32 || label == "" {
		return nil, fmt.Errorf("iso9660: volume label %q: want 1 to 32 bytes", label)
	}
	if len(files) > MaxFiles {
		return nil, fmt.Errorf("iso9660: %d files, at most %d", len(files), MaxFiles)
	}
	files = append([]File(nil), files...)
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })
	total := 0
	seen := map[string]bool{}
	for _, f := range files {
		if f.Name == "" || len(f.Name) > maxName || strings.ContainsAny(f.Name, "/\x00") || f.Name == "." || f.Name == ".." {
			return nil, fmt.Errorf("iso9660: bad file name %q", f.Name)
		}
		if seen[f.Name] {
			return nil, fmt.Errorf("iso9660: file %q given twice", f.Name)
		}
		seen[f.Name] = true
		total += len(f.Data)
		if total > MaxSize {
			return nil, errors.New("iso9660: files larger than 64 MiB together")
		}
	}
	ts := dirTime(t)
	isoNames := isoIdentifiers(files)

	// Lay out the data: each file from a sector boundary.
	lbas := make([]uint32, len(files))
	next := uint32(firstData)
	for i, f := range files {
		lbas[i] = next
		next += uint32((len(f.Data) + sector - 1) / sector)
		if len(f.Data) == 0 {
			lbas[i] = 0 // an empty file has no extent
		}
	}
	volSectors := next

	// The root directory: ".", ".." and the files.
	var root []byte
	dot := record(rootLBA, sector, ts, 0x02, []byte{0}, append(append(suspSP(), suspER()...), suspPX(0o40555, 2)...))
	dotdot := record(rootLBA, sector, ts, 0x02, []byte{1}, suspPX(0o40555, 2))
	root = append(root, dot...)
	root = append(root, dotdot...)
	for i, f := range files {
		rec := record(lbas[i], uint32(len(f.Data)), ts, 0, []byte(isoNames[i]), append(suspPX(0o100444, 1), suspNM(f.Name)...))
		if len(root)+len(rec) > sector {
			return nil, errors.New("iso9660: too many files for one directory sector")
		}
		root = append(root, rec...)
	}

	img := make([]byte, int(volSectors)*sector)
	pvd := img[16*sector : 17*sector]
	pvd[0] = 1
	copy(pvd[1:], "CD001")
	pvd[6] = 1
	pad(pvd[8:40], "LINUX")
	pad(pvd[40:72], label)
	both32(pvd[80:], volSectors)
	both16(pvd[120:], 1)
	both16(pvd[124:], 1)
	both16(pvd[128:], sector)
	both32(pvd[132:], 10) // path table: the root alone
	binary.LittleEndian.PutUint32(pvd[140:], 18)
	binary.BigEndian.PutUint32(pvd[148:], 19)
	copy(pvd[156:190], record(rootLBA, sector, ts, 0x02, []byte{0}, nil))
	pad(pvd[190:318], "")
	pad(pvd[318:446], "")
	pad(pvd[446:574], "")
	pad(pvd[574:702], "VIO")
	pad(pvd[702:813], "")
	vt := volTime(t)
	copy(pvd[813:], vt)
	copy(pvd[830:], vt)
	copy(pvd[847:], volTime(time.Time{}))
	copy(pvd[864:], vt)
	pvd[881] = 1

	term := img[17*sector:]
	term[0] = 255
	copy(term[1:], "CD001")
	term[6] = 1

	// Path tables, little- then big-endian: one entry, the root.
	for i, le := range []bool{true, false} {
		pt := img[(18+i)*sector:]
		pt[0] = 1
		if le {
			binary.LittleEndian.PutUint32(pt[2:], rootLBA)
			binary.LittleEndian.PutUint16(pt[6:], 1)
		} else {
			binary.BigEndian.PutUint32(pt[2:], rootLBA)
			binary.BigEndian.PutUint16(pt[6:], 1)
		}
	}
	copy(img[rootLBA*sector:], root)
	for i, f := range files {
		if len(f.Data) > 0 {
			copy(img[int(lbas[i])*sector:], f.Data)
		}
	}
	return img, nil
}

// isoIdentifiers gives each file a unique ISO 9660 level 1 identifier
// (8.3 upper-case d-characters with ";1"), for readers without Rock Ridge.
func isoIdentifiers(files []File) []string {
	out := make([]string, len(files))
	used := map[string]bool{}
	for i, f := range files {
		base, ext, _ := strings.Cut(f.Name, ".")
		b, e := dchars(base, 8), dchars(ext, 3)
		if b == "" {
			b = "FILE"
		}
		id := b + "." + e + ";1"
		for n := 1; used[id]; n++ {
			s := fmt.Sprint(n)
			id = b[:min(len(b), 8-len(s))] + s + "." + e + ";1"
		}
		used[id] = true
		out[i] = id
	}
	return out
}

func dchars(s string, n int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < n; i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z':
			b.WriteByte(c - 'a' + 'A')
		case c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_':
			b.WriteByte(c)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// record builds a directory record.
func record(lba, size uint32, ts [7]byte, flags byte, id []byte, su []byte) []byte {
	n := 33 + len(id)
	if n%2 == 1 {
		n++
	}
	r := make([]byte, n, n+len(su)+1)
	both32(r[2:], lba)
	both32(r[10:], size)
	copy(r[18:25], ts[:])
	r[25] = flags
	both16(r[28:], 1)
	r[32] = byte(len(id))
	copy(r[33:], id)
	r = append(r, su...)
	if len(r)%2 == 1 {
		r = append(r, 0)
	}
	r[0] = byte(len(r))
	return r
}

// System Use Sharing Protocol entries.
func suspSP() []byte { return []byte{'S', 'P', 7, 1, 0xBE, 0xEF, 0} }

func suspER() []byte {
	id, desc, src := "RRIP_1991A", "ROCK RIDGE NAMES AND POSIX ATTRIBUTES", "RRIP 1.10"
	e := []byte{'E', 'R', byte(8 + len(id) + len(desc) + len(src)), 1, byte(len(id)), byte(len(desc)), byte(len(src)), 1}
	e = append(e, id...)
	e = append(e, desc...)
	return append(e, src...)
}

func suspPX(mode uint32, links uint32) []byte {
	e := make([]byte, 36)
	copy(e, "PX")
	e[2], e[3] = 36, 1
	both32(e[4:], mode)
	both32(e[12:], links)
	both32(e[20:], 0) // uid
	both32(e[28:], 0) // gid
	return e
}

func suspNM(name string) []byte {
	return append([]byte{'N', 'M', byte(5 + len(name)), 1, 0}, name...)
}

func both16(b []byte, v uint16) {
	binary.LittleEndian.PutUint16(b, v)
	binary.BigEndian.PutUint16(b[2:], v)
}

func both32(b []byte, v uint32) {
	binary.LittleEndian.PutUint32(b, v)
	binary.BigEndian.PutUint32(b[4:], v)
}

func pad(b []byte, s string) {
	for i := range b {
		b[i] = ' '
	}
	copy(b, s)
}

// dirTime is a directory record's 7-byte time, in UTC.
func dirTime(t time.Time) [7]byte {
	t = t.UTC()
	y := t.Year() - 1900
	if y < 0 || y > 255 {
		y = 0
	}
	return [7]byte{byte(y), byte(t.Month()), byte(t.Day()), byte(t.Hour()), byte(t.Minute()), byte(t.Second()), 0}
}

// volTime is a volume descriptor's 17-byte time; the zero time is the
// "not specified" value.
func volTime(t time.Time) []byte {
	if t.IsZero() {
		return append([]byte("0000000000000000"), 0)
	}
	t = t.UTC()
	return append([]byte(fmt.Sprintf("%04d%02d%02d%02d%02d%02d%02d", t.Year(), int(t.Month()), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond()/1e7)), 0)
}
