package partition_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/bootdisk/bootdisktest"
	"github.com/viovmm/vio/bootdisk/partition"
)

// sfdiskDump is what sfdisk -J says about a disk: the reference.
type sfdiskDump struct {
	Table struct {
		Label      string `json:"label"`
		Partitions []struct {
			Node  string `json:"node"`
			Start int64  `json:"start"`
			Size  int64  `json:"size"`
			Type  string `json:"type"`
			UUID  string `json:"uuid"`
			Name  string `json:"name"`
		} `json:"partitions"`
	} `json:"partitiontable"`
}

func read(t *testing.T, path string) (partition.Scheme, []partition.Partition) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, ps, err := partition.Read(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return s, ps
}

func TestAgainstSfdisk(t *testing.T) {
	bootdisktest.Need(t, "sfdisk")
	for _, c := range []struct {
		label  string
		scheme partition.Scheme
		parts  []bootdisktest.Part
	}{
		{"gpt", partition.GPT, []bootdisktest.Part{{Type: partition.TypeESP, SizeMiB: 2}, {Type: partition.TypeLinux, SizeMiB: 3}, {Type: partition.TypeLinux, SizeMiB: 1}}},
		{"dos", partition.MBR, []bootdisktest.Part{{Type: "c", SizeMiB: 2}, {Type: "83", SizeMiB: 3}, {Type: "83", SizeMiB: 1, Logical: true}, {Type: "82", SizeMiB: 1, Logical: true}}},
	} {
		t.Run(c.label, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "disk.img")
			bootdisktest.Build(t, img, c.label, c.parts)
			if c.label == "gpt" {
				// A name, which sfdisk then reports too.
				bootdisktest.Run(t, "sfdisk", "-q", "--part-label", img, "2", "rootfs")
			}
			var ref sfdiskDump
			if err := json.Unmarshal([]byte(bootdisktest.Run(t, "sfdisk", "-J", img)), &ref); err != nil {
				t.Fatal(err)
			}
			scheme, ps := read(t, img)
			if scheme != c.scheme {
				t.Errorf("scheme %s, want %s", scheme, c.scheme)
			}
			var want []partition.Partition
			for _, p := range ref.Table.Partitions {
				if c.label == "dos" && (p.Type == "5" || p.Type == "f") {
					continue // the extended partition itself
				}
				num := 0
				for _, d := range strings.TrimPrefix(p.Node, img) {
					num = num*10 + int(d-'0')
				}
				typ := strings.ToUpper(p.Type)
				if len(typ) == 1 {
					typ = "0" + typ
				}
				w := partition.Partition{Number: num, Start: p.Start * 512, Size: p.Size * 512, Type: typ, Name: p.Name, UUID: strings.ToLower(p.UUID)}
				if c.label == "dos" {
					w.UUID = ""
				}
				want = append(want, w)
			}
			if len(ps) != len(want) {
				t.Fatalf("read %+v\nsfdisk says %+v", ps, want)
			}
			for i := range want {
				got := ps[i]
				if c.label == "dos" {
					got.UUID = ""
				}
				if got != want[i] {
					t.Errorf("partition %d: read %+v, sfdisk says %+v", i, got, want[i])
				}
			}
		})
	}
}

// TestBackupGPT: with the primary header destroyed, the backup at the end
// of the disk is used.
func TestBackupGPT(t *testing.T) {
	bootdisktest.Need(t, "sfdisk")
	img := filepath.Join(t.TempDir(), "disk.img")
	bootdisktest.Build(t, img, "gpt", []bootdisktest.Part{{Type: partition.TypeLinux, SizeMiB: 2}})
	_, good := read(t, img)
	b, _ := os.ReadFile(img)
	copy(b[512:], "GARBAGE!")
	_, ps, err := partition.Read(bytes.NewReader(b), int64(len(b)))
	if err != nil || len(ps) != 1 || ps[0] != good[0] {
		t.Fatalf("with the primary header broken: %+v, %v; want %+v", ps, err, good)
	}
	// Both broken: an error, not a guess.
	copy(b[len(b)-512:], "GARBAGE!")
	if _, _, err := partition.Read(bytes.NewReader(b), int64(len(b))); !errors.Is(err, partition.ErrCorrupt) {
		t.Fatalf("both headers broken: %v, want ErrCorrupt", err)
	}
}

func TestNoTable(t *testing.T) {
	for _, b := range [][]byte{nil, make([]byte, 4096)} {
		if _, _, err := partition.Read(bytes.NewReader(b), int64(len(b))); !errors.Is(err, partition.ErrNoTable) {
			t.Errorf("%d zero bytes: %v, want ErrNoTable", len(b), err)
		}
	}
}

// TestEBRLoop: an extended boot record pointing back at itself ends in an
// error, not a loop.
func TestEBRLoop(t *testing.T) {
	b := make([]byte, 1<<20)
	b[510], b[511] = 0x55, 0xAA
	e := b[446:]
	e[4] = 0x05
	e[8] = 2     // start sector 2
	e[12] = 0xff // sectors
	ebr := b[1024:]
	ebr[510], ebr[511] = 0x55, 0xAA
	ebr[446+4] = 0x83
	ebr[446+8] = 1
	ebr[446+12] = 1
	ebr[462+4] = 0x05
	ebr[462+8] = 0 // no next EBR
	if _, ps, err := partition.Read(bytes.NewReader(b), int64(len(b))); err != nil || len(ps) != 1 || ps[0].Number != 5 {
		t.Fatalf("one logical partition: %+v, %v", ps, err)
	}
	// The next EBR at offset 4 of the extended partition, which names
	// itself as its successor (offsets are relative to the extended
	// partition's start).
	ebr[462+8] = 4
	ebr2 := b[(2+4)*512:]
	copy(ebr2, ebr[:512])
	if _, _, err := partition.Read(bytes.NewReader(b), int64(len(b))); !errors.Is(err, partition.ErrCorrupt) {
		t.Fatalf("looping EBR chain: %v, want ErrCorrupt", err)
	}
}

func FuzzRead(f *testing.F) {
	for _, name := range []string{"testdata/gpt.img", "testdata/mbr.img"} {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	f.Add(make([]byte, 1024))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, ps, err := partition.Read(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		for _, p := range ps {
			if p.Start < 0 || p.Size <= 0 || p.Start+p.Size > int64(len(b)) {
				t.Fatalf("partition %+v outside the %d-byte disk", p, len(b))
			}
		}
	})
}
