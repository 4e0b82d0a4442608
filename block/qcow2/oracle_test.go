package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// These tests use QEMU's own tools as the oracle: images written by one
// side must read identically on the other, and `qemu-img check` must find
// nothing wrong with what vio writes.

// dump returns the guest-visible contents of an image as qemu-img reads
// them (extra options select a snapshot).
func dump(t *testing.T, path string, extra ...string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "dump.raw")
	args := append([]string{"convert", "-O", "raw"}, extra...)
	qemu(t, "qemu-img", append(args, path, out)...)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readAll reads an image through vio.
func readAll(t *testing.T, img *Image) []byte {
	t.Helper()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	if i := bytes.Compare(got, want); i != 0 {
		for j := range got {
			if got[j] != want[j] {
				t.Fatalf("%s: first difference at byte %d (cluster %d): got %#x, want %#x", what, j, j>>16, got[j], want[j])
			}
		}
	}
}

// op is one guest operation, replayable through vio and qemu-io.
type op struct {
	kind    string // write, zero, zero-unmap, discard
	off, n  int64
	pattern byte
}

func (o op) qemuIO() string {
	switch o.kind {
	case "write":
		return fmt.Sprintf("write -q -P %d %d %d", o.pattern, o.off, o.n)
	case "zero":
		return fmt.Sprintf("write -q -z %d %d", o.off, o.n)
	case "zero-unmap":
		return fmt.Sprintf("write -q -z -u %d %d", o.off, o.n)
	default:
		return fmt.Sprintf("discard -q %d %d", o.off, o.n)
	}
}

func (o op) apply(t *testing.T, img *Image) {
	t.Helper()
	var err error
	switch o.kind {
	case "write":
		_, err = img.WriteAt(bytes.Repeat([]byte{o.pattern}, int(o.n)), o.off)
	case "zero":
		err = img.WriteZeroes(o.off, o.n, false)
	case "zero-unmap":
		err = img.WriteZeroes(o.off, o.n, true)
	case "discard":
		err = img.Discard(o.off, o.n)
	}
	if err != nil {
		t.Fatalf("%s %d+%d: %v", o.kind, o.off, o.n, err)
	}
}

func randomOps(rng *rand.Rand, size int64, n int, cs int64, discard bool) []op {
	var ops []op
	for i := 0; i < n; i++ {
		var o op
		switch r := rng.IntN(10); {
		case r < 6:
			o.kind = "write"
		case r < 8:
			o.kind = "zero"
		case r < 9:
			o.kind = "zero-unmap"
		default:
			o.kind = "discard"
		}
		if o.kind == "discard" && !discard {
			o.kind = "write"
		}
		o.pattern = byte(1 + rng.IntN(255))
		// Mostly sector-aligned, sometimes cluster-aligned, sometimes odd.
		switch rng.IntN(3) {
		case 0:
			o.off = rng.Int64N(size/cs) * cs
			o.n = (1 + rng.Int64N(4)) * cs
		case 1:
			o.off = rng.Int64N(size/512) * 512
			o.n = (1 + rng.Int64N(300)) * 512
		default:
			o.off = rng.Int64N(size)
			o.n = 1 + rng.Int64N(3*cs)
		}
		o.n = min(o.n, size-o.off)
		if o.kind == "discard" {
			// qemu-io discards need sector alignment
			o.off &^= 511
			o.n = max(512, o.n&^511)
			o.n = min(o.n, size-o.off)
		}
		ops = append(ops, o)
	}
	return ops
}

func runQemuIO(t *testing.T, path string, ops []op) {
	t.Helper()
	const batch = 200
	for i := 0; i < len(ops); i += batch {
		args := []string{"-f", "qcow2"}
		for _, o := range ops[i:min(i+batch, len(ops))] {
			args = append(args, "-c", o.qemuIO())
		}
		qemu(t, "qemu-io", append(args, path)...)
	}
}

// TestSameWritesAsQemuIO replays one random sequence of writes, zeroing
// and discards through vio and through qemu-io, and compares the images.
func TestSameWritesAsQemuIO(t *testing.T) {
	needQemu(t)
	for _, c := range []struct {
		name  string
		copts CreateOptions
		qopts string
	}{
		{"default", CreateOptions{}, "cluster_size=65536"},
		{"v2-4K", CreateOptions{Version: 2, ClusterSize: 4096}, "compat=0.10,cluster_size=4096"},
		{"512B-refcount2", CreateOptions{ClusterSize: 512, RefcountBits: 2}, "cluster_size=512,refcount_bits=2"},
		{"4K-refcount1", CreateOptions{ClusterSize: 4096, RefcountBits: 1}, "cluster_size=4096,refcount_bits=1"},
		{"2M-refcount64", CreateOptions{ClusterSize: 2 << 20, RefcountBits: 64}, "cluster_size=2097152,refcount_bits=64"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			const size = 6<<20 + 512
			cs := int64(c.copts.ClusterSize)
			if cs == 0 {
				cs = 65536
			}
			nops := 400
			if cs > 64<<10 {
				nops = 80 // every partial write copies 2 MiB
			}
			ops := randomOps(rand.New(rand.NewPCG(1, uint64(cs))), size, nops, cs, true)
			ours := filepath.Join(dir, "vio.qcow2")
			img := create(t, ours, size, c.copts)
			for i, o := range ops {
				o.apply(t, img)
				if i%50 == 0 {
					if err := img.Flush(); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			theirs := filepath.Join(dir, "qemu.qcow2")
			qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", c.qopts, theirs, fmt.Sprint(size))
			runQemuIO(t, theirs, ops)
			qemuCheck(t, ours, false)
			qemu(t, "qemu-img", "compare", "-q", ours, theirs)
			// And vio reads qemu's image the same as its own.
			mine := readAll(t, openImg(t, ours, true))
			sameBytes(t, "vio reading qemu's image", readAll(t, openImg(t, theirs, true)), mine)
			sameBytes(t, "qemu reading vio's image", dump(t, ours), mine)
		})
	}
}

// TestReadsQemuChains builds a raw <- qcow2 <- qcow2 chain with qemu
// tools (relative backing names, zero clusters, discards, compressed
// clusters) and reads it through vio.
func TestReadsQemuChains(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	const size = 4 << 20
	rng := rand.New(rand.NewPCG(2, 2))
	base := make([]byte, size)
	for i := range base {
		base[i] = byte(rng.IntN(4)) // compressible but not constant
	}
	clear(base[1<<20 : 2<<20])
	basePath := filepath.Join(dir, "base.raw")
	os.WriteFile(basePath, base, 0o644)
	// The middle image: compressed copy of the base, then overwritten
	// partly, with a raw backing for the last part.
	comp := filepath.Join(dir, "comp.qcow2")
	qemu(t, "qemu-img", "convert", "-c", "-O", "qcow2", basePath, comp)
	if n := countKind(t, comp, kCompressed); n == 0 {
		t.Fatal("qemu-img convert -c made no compressed clusters")
	}
	sameBytes(t, "compressed image", readAll(t, openImg(t, comp, true)), dump(t, comp))

	mid := filepath.Join(dir, "mid.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "comp.qcow2", "-F", "qcow2", mid)
	// Compressed writes only go to unallocated clusters.
	qemu(t, "qemu-io", "-f", "qcow2", "-c", "write -q -c -P 7 0 64k", "-c", "write -q -c -P 9 192k 128k", mid)
	runQemuIO(t, mid, randomOps(rng, size, 60, 65536, true))
	top := filepath.Join(dir, "sub", "top.qcow2")
	os.Mkdir(filepath.Dir(top), 0o755)
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "../mid.qcow2", "-F", "qcow2", top, fmt.Sprint(size+1<<20))
	runQemuIO(t, top, randomOps(rng, size+1<<20, 60, 4096, true))
	qemu(t, "qemu-io", "-f", "qcow2", "-c", "write -q -z 128k 64k", top)

	img := openImg(t, top, true)
	defer img.Close()
	if name, _ := img.BackingFile(); name != "../mid.qcow2" {
		t.Errorf("backing file %q", name)
	}
	sameBytes(t, "3-level chain", readAll(t, img), dump(t, top))
}

// TestQemuSnapshots reads and manipulates snapshots made by qemu-img, and
// has qemu-img read snapshots made by vio.
func TestQemuSnapshots(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	const size = 3 << 20
	path := filepath.Join(dir, "snap.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", path, fmt.Sprint(size))
	rng := rand.New(rand.NewPCG(3, 3))
	runQemuIO(t, path, randomOps(rng, size, 40, 65536, true))
	qemu(t, "qemu-img", "snapshot", "-c", "one", path)
	runQemuIO(t, path, randomOps(rng, size, 40, 65536, true))
	qemu(t, "qemu-img", "snapshot", "-c", "two", path)
	runQemuIO(t, path, randomOps(rng, size, 40, 65536, true))
	one, two, active := dump(t, path, "-l", "snapshot.name=one"), dump(t, path, "-l", "snapshot.name=two"), dump(t, path)

	img := openImg(t, path, false)
	snaps := img.Snapshots()
	if len(snaps) != 2 || snaps[0].Name != "one" || snaps[1].Name != "two" || snaps[0].DiskSize != size {
		t.Fatalf("snapshots = %+v", snaps)
	}
	sameBytes(t, "active", readAll(t, img), active)
	// vio takes its own snapshot, writes, then reverts to qemu's "one".
	if err := img.CreateSnapshot("three"); err != nil {
		t.Fatal(err)
	}
	for _, o := range randomOps(rng, size, 50, 65536, true) {
		o.apply(t, img)
	}
	after := readAll(t, img)
	if err := img.ApplySnapshot("one"); err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "after applying one", readAll(t, img), one)
	if err := img.DeleteSnapshot("two"); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, path, false)
	out := qemu(t, "qemu-img", "snapshot", "-l", path)
	if !strings.Contains(out, "one") || !strings.Contains(out, "three") || strings.Contains(out, "two") {
		t.Errorf("qemu-img snapshot -l:\n%s", out)
	}
	sameBytes(t, "qemu reading active", dump(t, path), one)
	sameBytes(t, "qemu reading vio's snapshot", dump(t, path, "-l", "snapshot.name=three"), active)
	_ = two
	_ = after
	// qemu-img applies vio's snapshot and deletes one.
	qemu(t, "qemu-img", "snapshot", "-a", "three", path)
	qemu(t, "qemu-img", "snapshot", "-d", "one", path)
	qemuCheck(t, path, false)
	sameBytes(t, "vio reading after qemu applied three", readAll(t, openImg(t, path, true)), active)
}

// TestWritesOntoQemuImages writes through vio onto a qemu-made overlay
// with compressed clusters and a backing file, then lets qemu check it.
func TestWritesOntoQemuImages(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	const size = 2 << 20
	base := filepath.Join(dir, "base.qcow2")
	src := filepath.Join(dir, "src.raw")
	pattern := bytes.Repeat([]byte("vio compresses poorly? "), size/23+1)[:size]
	os.WriteFile(src, pattern, 0o644)
	qemu(t, "qemu-img", "convert", "-c", "-O", "qcow2", src, base)
	top := filepath.Join(dir, "top.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
	prealloc := filepath.Join(dir, "prealloc.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata,cluster_size=4096", prealloc, fmt.Sprint(size))
	v2 := filepath.Join(dir, "v2.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "prealloc.qcow2", "-F", "qcow2", v2)
	// Writing onto the compressed image itself: COW out of compressed
	// clusters, freeing them.
	for _, path := range []string{base, top, prealloc, v2} {
		want := dump(t, path)
		maybeZero := make([]bool, size) // discarded: zero or old
		img := openImg(t, path, false)
		for _, o := range randomOps(rand.New(rand.NewPCG(4, 4)), size, 200, 65536, true) {
			o.apply(t, img)
			for i := o.off; i < o.off+o.n; i++ {
				switch o.kind {
				case "write":
					want[i], maybeZero[i] = o.pattern, false
				case "discard":
					maybeZero[i] = true
				default:
					want[i], maybeZero[i] = 0, false
				}
			}
		}
		got := readAll(t, img)
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
		qemuCheck(t, path, false)
		sameBytes(t, "qemu reading "+filepath.Base(path), dump(t, path), got)
		for i := range got {
			if got[i] != want[i] && !(maybeZero[i] && got[i] == 0) {
				t.Fatalf("%s: byte %d = %#x, want %#x", filepath.Base(path), i, got[i], want[i])
			}
		}
	}
}

// countKind counts the active L2 entries of one kind.
func countKind(t *testing.T, path string, kind int) int {
	img := openImg(t, path, true)
	defer img.Close()
	img.mu.Lock()
	defer img.mu.Unlock()
	n := 0
	for g := uint64(0); g < (uint64(img.Size())+img.cs-1)/img.cs; g++ {
		m, err := img.lookup(g)
		if err != nil {
			t.Fatal(err)
		}
		if m.kind == kind {
			n++
		}
	}
	return n
}

// TestCheckAgreesWithQemu damages images in known ways and compares
// Check's verdict with qemu-img check's.
func TestCheckAgreesWithQemu(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "c.qcow2")
	img := create(t, path, 4<<20, CreateOptions{ClusterSize: 4096})
	for _, o := range randomOps(rand.New(rand.NewPCG(5, 5)), 4<<20, 100, 4096, true) {
		o.apply(t, img)
	}
	img.CreateSnapshot("s")
	img.WriteAt(make([]byte, 10000), 5000)
	img.Close()
	verdict := func() (int, CheckResult) {
		out, err := exec.Command("qemu-img", "check", path).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		img := openImg(t, path, true)
		defer img.Close()
		res, err := img.Check()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("qemu-img check exit %d:\n%s\nvio: %+v", code, out, res)
		return code, res
	}
	if code, res := verdict(); code != 0 || res.Corruptions+res.Leaks != 0 {
		t.Fatalf("clean image: qemu %d, vio %+v", code, res)
	}
	// A leak: raise the refcount of the header cluster.
	f := openRaw(t, path, false)
	hdr := make([]byte, 4096)
	f.ReadAt(hdr, 0)
	h, _ := parseHeader(hdr, f.Size())
	rt := make([]byte, 8)
	f.ReadAt(rt, int64(h.refTableOffset))
	rb := be.Uint64(rt)
	f.WriteAt([]byte{0, 2}, int64(rb)) // cluster 0: refcount 2
	f.Close()
	if code, res := verdict(); code != 3 || res.Leaks != 1 || res.Corruptions != 0 {
		t.Fatalf("leak: qemu exit %d, vio %+v", code, res)
	}
	// Repairing the leak leaves a clean image.
	repair := func(mode RepairMode) {
		img := openImg(t, path, false)
		res, err := img.Repair(mode)
		if err != nil || res.Leaks+res.Corruptions != 0 || res.Repaired == 0 {
			t.Fatalf("Repair(%d) = %+v, %v", mode, res, err)
		}
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
		qemuCheck(t, path, false)
	}
	repair(RepairLeaks)
	// A corruption: cluster 0's refcount 0.
	f = openRaw(t, path, false)
	f.WriteAt([]byte{0, 0}, int64(rb))
	f.Close()
	if code, res := verdict(); code != 2 || res.Corruptions == 0 {
		t.Fatalf("corruption: qemu exit %d, vio %+v", code, res)
	}
	repair(RepairAll)
	// Copied flags missing (the trace a crashed snapshot may leave).
	img = openImg(t, path, false)
	img.mu.Lock()
	img.clearCopied()
	img.writeback()
	img.mu.Unlock()
	img.Close()
	if code, res := verdict(); code != 2 || res.Corruptions == 0 {
		t.Fatalf("cleared copied flags: qemu exit %d, vio %+v", code, res)
	}
	repair(RepairAll)
}

// TestNoDataOverMetadata points an L2 entry at the L1 table's cluster (as
// a damaged or hostile image might): the write must fail, not clobber it.
func TestNoDataOverMetadata(t *testing.T) {
	path := filepath.Join(t.TempDir(), "evil.qcow2")
	img := create(t, path, 1<<20, CreateOptions{ClusterSize: 4096})
	img.WriteAt([]byte("x"), 0)
	img.Close()
	img = openImg(t, path, false)
	img.mu.Lock()
	l2, _, _ := img.l1Entry(0)
	t2, _ := img.l2Table(l2)
	be.PutUint64(t2.data, img.h.l1Offset|oflagCopied)
	img.mu.Unlock()
	if _, err := img.WriteAt([]byte("overwrite"), 0); !errors.Is(err, ErrCorrupt) {
		t.Errorf("write through an entry aimed at the L1 table: %v, want ErrCorrupt", err)
	}
	img.mu.Lock()
	first := img.l1[0]
	img.mu.Unlock()
	buf := make([]byte, 8)
	img.file.ReadAt(buf, int64(img.h.l1Offset))
	if be.Uint64(buf) != first {
		t.Errorf("L1 table on disk changed to %#x", be.Uint64(buf))
	}
}

// TestRefcountTableGrowth fills an image whose refcount table covers
// little (512-byte clusters, 64-bit refcounts: 2 MiB per table cluster),
// so the table must move and grow several times, with snapshots on top.
func TestRefcountTableGrowth(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grow.qcow2")
	const size = 6 << 20
	img := create(t, path, size, CreateOptions{ClusterSize: 512, RefcountBits: 64})
	rng := rand.New(rand.NewPCG(6, 6))
	want := make([]byte, size)
	fillRandom(rng, want)
	for off := 0; off < size; off += 128 << 10 {
		if _, err := img.WriteAt(want[off:off+128<<10], int64(off)); err != nil {
			t.Fatal(err)
		}
		if off == 3<<20 {
			if err := img.CreateSnapshot("half"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := img.Info(); n.ClusterSize != 512 {
		t.Fatal(n)
	}
	img.mu.Lock()
	clusters := img.h.refTableClusters
	img.mu.Unlock()
	if clusters < 4 {
		t.Errorf("refcount table has %d clusters: it never grew", clusters)
	}
	sameBytes(t, "before reopening", readAll(t, img), want)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, path, false)
	sameBytes(t, "after reopening", readAll(t, openImg(t, path, true)), want)
	if _, err := exec.LookPath("qemu-img"); err == nil {
		sameBytes(t, "qemu reading it", dump(t, path), want)
	}
}
