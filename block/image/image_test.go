package image

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/block/qcow2"
	"github.com/viovmm/vio/block/raw"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"0": 0, "512": 512, "1k": 1024, "1K": 1024, "512M": 512 << 20, "10G": 10 << 30,
		"1T": 1 << 40, "1.5G": 3 << 29, "2GiB": 2 << 30, "4MB": 4 << 20, "1E": 1 << 60,
	}
	for s, want := range good {
		if got, err := ParseSize(s); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "G", "10Q", "-1", "1.5", "ten", "1e3", "8E", "99999999999999999999", "+5G", "0x10"} {
		if got, err := ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", s, got)
		} else if !strings.Contains(err.Error(), s) {
			t.Errorf("ParseSize(%q): error %q does not quote the input", s, err)
		}
	}
}

func TestProbe(t *testing.T) {
	for head, want := range map[string]string{"QFI\xfb\x00\x00\x00\x03": Qcow2, "hello": Raw, "": Raw} {
		if got, err := probeBytes([]byte(head)); err != nil || got != want {
			t.Errorf("probe %q = %q, %v", head, got, err)
		}
	}
	for _, head := range []string{"KDMV....", "vhdxfile", "conectix", "LUKS\xba\xbe\x00\x01"} {
		if _, err := probeBytes([]byte(head)); !errors.Is(err, ErrUnknownFormat) {
			t.Errorf("probe %q: %v, want ErrUnknownFormat", head, err)
		}
	}
}

func write(t *testing.T, path string, data []byte, off int64) {
	t.Helper()
	b, err := Open(path, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := Open(path, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p := make([]byte, b.Size())
	if _, err := b.ReadAt(p, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestChainAndConvert builds raw <- qcow2 <- qcow2 with relative names in
// different directories, converts the top to both formats and checks
// the contents along the way (and with qemu-img where installed).
func TestChainAndConvert(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755)
	base := filepath.Join(dir, "a", "b", "base.raw")
	if err := Create(base, CreateOptions{Format: Raw, Size: 3 << 20}); err != nil {
		t.Fatal(err)
	}
	write(t, base, bytes.Repeat([]byte{1}, 1<<20), 0)
	mid := filepath.Join(dir, "a", "mid.qcow2")
	if err := Create(mid, CreateOptions{BackingFile: "b/base.raw", Size: -1}); err != nil {
		t.Fatal(err)
	}
	write(t, mid, bytes.Repeat([]byte{2}, 4096), 1<<20-100)
	top := filepath.Join(dir, "top.qcow2")
	if err := Create(top, CreateOptions{BackingFile: "a/mid.qcow2", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	write(t, top, []byte("top"), 3<<20)
	want := make([]byte, 4<<20)
	copy(want, bytes.Repeat([]byte{1}, 1<<20))
	copy(want[1<<20-100:], bytes.Repeat([]byte{2}, 4096))
	copy(want[3<<20:], "top")
	if got := read(t, top); !bytes.Equal(got, want) {
		t.Fatal("chain reads wrong")
	}
	in, err := GetInfo(top, ToolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if in.Format != Qcow2 || in.BackingFile != "a/mid.qcow2" || in.BackingFormat != Qcow2 || in.VirtualSize != 4<<20 {
		t.Errorf("info = %+v", in)
	}
	for _, f := range []string{Raw, Qcow2} {
		out := filepath.Join(dir, "out."+f)
		var calls int
		if err := Convert(top, out, ConvertOptions{Format: f, Progress: func(d, n int64) { calls++ }}); err != nil {
			t.Fatal(err)
		}
		if got := read(t, out); !bytes.Equal(got, want) {
			t.Errorf("converted %s reads wrong", f)
		}
		if calls == 0 {
			t.Error("no progress reported")
		}
		if _, err := exec.LookPath("qemu-img"); err == nil {
			if out, err := exec.Command("qemu-img", "compare", top, out).CombinedOutput(); err != nil {
				t.Errorf("qemu-img compare: %v\n%s", err, out)
			}
		}
	}
	res, format, err := Check(top, ToolOptions{})
	if err != nil || format != Qcow2 || res.Corruptions+res.Leaks != 0 {
		t.Errorf("Check = %+v, %s, %v", res, format, err)
	}
}

func TestResizeAndSnapshots(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "d.qcow2")
	if err := Create(p, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	write(t, p, []byte("before"), 0)
	if err := SnapshotOp(p, SnapshotCreate, "s"); err != nil {
		t.Fatal(err)
	}
	write(t, p, []byte("after!"), 0)
	if err := Resize(p, 2<<20); err != nil {
		t.Fatal(err)
	}
	if got := read(t, p); len(got) != 2<<20 || string(got[:6]) != "after!" {
		t.Fatalf("after resize: %d bytes, %q", len(got), got[:6])
	}
	if err := Resize(p, 1<<20); err == nil || !strings.Contains(err.Error(), "shrinking") {
		t.Errorf("shrink: %v", err)
	}
	snaps, err := Snapshots(p)
	if err != nil || len(snaps) != 1 || snaps[0].Name != "s" {
		t.Fatalf("snapshots = %+v, %v", snaps, err)
	}
	if err := SnapshotOp(p, SnapshotApply, "s"); err != nil {
		t.Fatal(err)
	}
	if got := read(t, p); len(got) != 1<<20 || string(got[:6]) != "before" {
		t.Fatalf("after apply: %d bytes, %q", len(got), got[:6])
	}
	if err := SnapshotOp(p, SnapshotDelete, "s"); err != nil {
		t.Fatal(err)
	}
	if err := SnapshotOp(p, SnapshotDelete, "s"); !errors.Is(err, qcow2.ErrNoSnapshot) {
		t.Errorf("deleting twice: %v", err)
	}
	r := filepath.Join(dir, "r.raw")
	Create(r, CreateOptions{Format: Raw, Size: 1 << 20})
	if err := Resize(r, 4096); err != nil {
		t.Errorf("shrinking raw: %v", err)
	}
	if err := SnapshotOp(r, SnapshotCreate, "x"); err == nil || !strings.Contains(err.Error(), "raw") {
		t.Errorf("snapshot of raw: %v", err)
	}
}

// TestErrors checks that each kind of bad input gets one clear sentence.
func TestErrors(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.qcow2")
	Create(good, CreateOptions{Size: 1 << 20})
	data, _ := os.ReadFile(good)
	trunc := filepath.Join(dir, "trunc.qcow2")
	os.WriteFile(trunc, data[:1000], 0o644)
	badMagic := filepath.Join(dir, "vmdk.img")
	os.WriteFile(badMagic, []byte("KDMV\x01\x00\x00\x00"), 0o644)
	orphanDir := filepath.Join(dir, "o")
	os.Mkdir(orphanDir, 0o755)
	Create(filepath.Join(dir, "b.raw"), CreateOptions{Format: Raw, Size: 1 << 20})
	Create(filepath.Join(dir, "orphan.qcow2"), CreateOptions{BackingFile: "b.raw", Size: -1})
	os.Rename(filepath.Join(dir, "orphan.qcow2"), filepath.Join(orphanDir, "orphan.qcow2"))
	for _, c := range []struct {
		err  error
		want string
	}{
		{func() error { _, err := Open(trunc, OpenOptions{ReadOnly: true}); return err }(), "outside the file"},
		{func() error { _, err := Open(badMagic, OpenOptions{ReadOnly: true}); return err }(), "VMDK image, which vio cannot open"},
		{func() error { _, err := Open(filepath.Join(orphanDir, "orphan.qcow2"), OpenOptions{}); return err }(), `backing file "b.raw" (looked for at`},
		{func() error { _, err := Open(filepath.Join(dir, "none"), OpenOptions{}); return err }(), "does not exist"},
		{Create(filepath.Join(dir, "x"), CreateOptions{Format: "vdi", Size: 1}), `unknown image format "vdi"`},
		{Create(filepath.Join(dir, "x"), CreateOptions{BackingFile: "nope.qcow2", Size: -1}), "does not exist"},
		{Create(filepath.Join(dir, "x"), CreateOptions{Size: -1}), "size is needed"},
		{Create(filepath.Join(dir, "x"), CreateOptions{Format: Raw, BackingFile: "b.raw", Size: 1}), "cannot have a backing file"},
	} {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("error %v, want one containing %q", c.err, c.want)
		}
		if c.err != nil && strings.Count(c.err.Error(), "\n") > 0 {
			t.Errorf("error spans lines: %q", c.err)
		}
	}
}

func TestOpenKinds(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "d.raw")
	Create(p, CreateOptions{Format: Raw, Size: 4096})
	b, err := Open(p, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.(*raw.File); !ok {
		t.Errorf("raw image opened as %T", b)
	}
	b.Close()
	// A raw file whose content happens to be a qcow2 header is opened
	// as raw when the format is given, as with qemu's -f raw.
	q := filepath.Join(dir, "q.qcow2")
	Create(q, CreateOptions{Size: 1 << 20})
	b, err = Open(q, OpenOptions{ReadOnly: true, Format: Raw})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.(*raw.File); !ok {
		t.Errorf("-f raw opened as %T", b)
	}
	b.Close()
}

// TestToolsRespectLocks: the tool operations refuse an image a VM (here
// a locked writable open) is using, as qemu-img does.
func TestToolsRespectLocks(t *testing.T) {
	p := filepath.Join(t.TempDir(), "busy.qcow2")
	if err := Create(p, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	vm, err := Open(p, OpenOptions{Lock: true})
	if err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"info":     func() error { _, err := GetInfo(p, ToolOptions{}); return err }(),
		"snapshot": SnapshotOp(p, SnapshotCreate, "x"),
		"resize":   Resize(p, 2<<20),
		"create":   Create(p, CreateOptions{Size: 1 << 20}),
	} {
		if !errors.Is(err, raw.ErrLocked) {
			t.Errorf("%s on an image in use: %v, want ErrLocked", name, err)
		}
	}
	vm.Close()
	if _, err := GetInfo(p, ToolOptions{}); err != nil {
		t.Errorf("info after the VM closed it: %v", err)
	}
}
