package crypt

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/filter"
)

// fastKDF keeps tests quick; the costs are what cryptsetup's minimums allow.
var (
	fastPBKDF2 = KDFParams{Type: PBKDF2, Iterations: 1000}
	fastArgon  = KDFParams{Type: Argon2id, Time: 4, Memory: 32, CPUs: 1}
)

var testPass = []byte("correct horse battery staple")

// newVolume formats a fresh in-memory child of dataSize bytes of data.
func newVolume(t testing.TB, dataSize int64, o FormatOptions) *keepOpen {
	t.Helper()
	m := &keepOpen{blocktest.NewMem(FormatDataOffset + dataSize)}
	if o.KDF.Type == "" {
		o.KDF = fastPBKDF2
	}
	if err := Format(m, testPass, o); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestConformance(t *testing.T) {
	for _, ss := range []int{512, 4096} {
		for _, discard := range []bool{false, true} {
			t.Run(fmt.Sprintf("sector%d/discard=%v", ss, discard), func(t *testing.T) {
				blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
					// The suite's size is not a whole number of 4 KiB
					// sectors: format a segment of whole sectors and
					// present the suite's size (the tail sector is then
					// always a partial one).
					data := (size + int64(ss) - 1) / int64(ss) * int64(ss)
					m := newVolume(t, data, FormatOptions{SectorSize: ss})
					d, err := OpenDisk(m, testPass, Options{Discard: discard})
					if err != nil {
						t.Fatal(err)
					}
					d.size = size
					return filter.View(d, filter.Caps{Discard: discard, WriteZeroes: discard})
				})
			})
		}
	}
}

func TestCapabilities(t *testing.T) {
	m := newVolume(t, 1<<20, FormatOptions{})
	b, err := Open(m, testPass, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if c := filter.CapsOf(b); c != (filter.Caps{}) {
		t.Errorf("without discard=on the disk offers %+v; want no optional capability (discard would leak allocation)", c)
	}
	b.Close()
	b, err = Open(m, testPass, Options{Discard: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if c := filter.CapsOf(b); c != (filter.Caps{Discard: true, WriteZeroes: true}) {
		t.Errorf("with discard=on the disk offers %+v; want discard and write-zeroes, never resize", c)
	}
}

func TestWrongPassphrase(t *testing.T) {
	m := newVolume(t, 1<<20, FormatOptions{})
	_, err := Open(m, []byte("wrong"), Options{})
	if !errors.Is(err, ErrPassphrase) {
		t.Fatalf("open with a wrong passphrase: %v, want ErrPassphrase", err)
	}
}

// TestCiphertext writes distinct plaintext blocks and checks that none of
// them appears anywhere in the child, at any 16-byte alignment.
func TestCiphertext(t *testing.T) {
	for _, ss := range []int{512, 4096} {
		m := newVolume(t, 1<<20, FormatOptions{SectorSize: ss})
		b, err := Open(m, testPass, Options{})
		if err != nil {
			t.Fatal(err)
		}
		plain := pattern(1<<20, 7)
		if _, err := b.WriteAt(plain, 0); err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := noPlaintextIn(m.Bytes(), plain); err != nil {
			t.Errorf("sector %d: %v", ss, err)
		}
		// And the same sector's data written twice at two places encrypts
		// differently (the tweak depends on the position).
		c := m.Bytes()[FormatDataOffset:]
		if bytes.Equal(c[:ss], c[ss:2*ss]) {
			t.Errorf("sector %d: two sectors encrypt alike", ss)
		}
	}
}

// pattern returns n bytes in which every 16-byte block is distinct and
// non-zero.
func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := 0; i < n; i += 16 {
		copy(p[i:], fmt.Sprintf("%c%014x|", 'A'+seed%26, i))
	}
	return p
}

// noPlaintextIn reports a 16-byte block of plain found in image at any
// offset that is a multiple of 16.
func noPlaintextIn(image, plain []byte) error {
	blocks := map[string]bool{}
	for i := 0; i+16 <= len(plain); i += 16 {
		blocks[string(plain[i:i+16])] = true
	}
	for i := 0; i+16 <= len(image); i += 16 {
		if blocks[string(image[i:i+16])] {
			return fmt.Errorf("plaintext block %q found at image offset %d", image[i:i+16], i)
		}
	}
	return nil
}

// TestUnalignedAndReopen writes at odd offsets and lengths through one open
// and reads back through another: the partial-sector merges are right and
// the data is in the child, not in the interposer.
func TestUnalignedAndReopen(t *testing.T) {
	for _, ss := range []int{512, 4096} {
		const size = 256 << 10
		m := newVolume(t, size, FormatOptions{SectorSize: ss})
		model := make([]byte, size)
		b, err := Open(m, testPass, Options{})
		if err != nil {
			t.Fatal(err)
		}
		for i, w := range []struct{ off, n int }{{1, 10}, {511, 2}, {4095, 4098}, {100, 9000}, {size - 3, 3}, {8192, 4096}, {3, size - 6}} {
			p := pattern(w.n, byte(i))
			copy(model[w.off:], p)
			if _, err := b.WriteAt(p, int64(w.off)); err != nil {
				t.Fatal(err)
			}
		}
		b.Close()
		b, err = Open(m, testPass, Options{})
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, size)
		if _, err := b.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, model) {
			t.Errorf("sector %d: data read after reopening differs from what was written", ss)
		}
		b.Close()
	}
}

func TestKeyslots(t *testing.T) {
	m := newVolume(t, 1<<20, FormatOptions{KDF: fastArgon})
	v, err := ReadVolume(m)
	if err != nil {
		t.Fatal(err)
	}
	second := []byte("second passphrase")
	slot, err := v.AddKey(testPass, second, fastPBKDF2)
	if err != nil {
		t.Fatal(err)
	}
	if slot != 1 {
		t.Errorf("new keyslot %d, want 1", slot)
	}
	k0, s0, err := v.Unlock(testPass)
	if err != nil {
		t.Fatal(err)
	}
	k1, s1, err := v.Unlock(second)
	if err != nil {
		t.Fatal(err)
	}
	if s0 != 0 || s1 != 1 || !bytes.Equal(k0, k1) {
		t.Fatalf("slots %d, %d: the two keyslots yield different volume keys", s0, s1)
	}
	if _, err := v.AddKey([]byte("nope"), []byte("x"), fastPBKDF2); !errors.Is(err, ErrPassphrase) {
		t.Errorf("add-key with a wrong passphrase: %v", err)
	}
	// Reread from disk: the header was written.
	v, err = ReadVolume(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.RemoveKey(testPass, false); err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.Unlock(testPass); !errors.Is(err, ErrPassphrase) {
		t.Errorf("removed passphrase still unlocks: %v", err)
	}
	if _, err := v.RemoveKey(second, false); err == nil {
		t.Error("removing the last keyslot without force succeeded")
	}
	// The removed slot's area no longer holds the split key.
	if _, err := Open(m, second, Options{}); err != nil {
		t.Fatal(err)
	}
	// A re-added slot takes the freed number and area.
	v, _ = ReadVolume(m)
	if slot, err := v.AddKey(second, testPass, fastPBKDF2); err != nil || slot != 0 {
		t.Errorf("re-adding: slot %d, %v", slot, err)
	}
}

// TestHeaderCopies damages one copy, then the other: the image opens from
// the copy left, and the next write repairs both.
func TestHeaderCopies(t *testing.T) {
	for _, which := range []int64{0, formatHdrSize} {
		m := newVolume(t, 1<<20, FormatOptions{})
		flipByte(t, m, which+offCsum+3)
		v, err := ReadVolume(m)
		if err != nil {
			t.Fatalf("copy at %d damaged: %v", which, err)
		}
		if !v.stale {
			t.Errorf("copy at %d damaged: not reported stale", which)
		}
		if _, err := v.AddKey(testPass, []byte("x"), fastPBKDF2); err != nil {
			t.Fatal(err)
		}
		if _, stale, err := readHeaders(m, m.Size()); err != nil || stale {
			t.Errorf("after a rewrite: stale %v, %v", stale, err)
		}
	}
	// Both damaged: a clear error.
	m := newVolume(t, 1<<20, FormatOptions{})
	flipByte(t, m, offCsum+3)
	flipByte(t, m, formatHdrSize+offCsum+3)
	if _, err := ReadVolume(m); !errors.Is(err, ErrCorrupt) {
		t.Errorf("both copies damaged: %v, want ErrCorrupt", err)
	}
	// The newer copy wins.
	m = newVolume(t, 1<<20, FormatOptions{})
	v, _ := ReadVolume(m)
	old := m.Bytes()[:formatHdrSize]
	v.AddKey(testPass, []byte("x"), fastPBKDF2)
	m.WriteAt(old, 0) // primary rolled back, as if the crash hit between the copies
	v, err := ReadVolume(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Metadata().Keyslots) != 2 || !v.stale {
		t.Errorf("an older primary beside a newer secondary: %d keyslots, stale %v; want the secondary's 2", len(v.Metadata().Keyslots), v.stale)
	}
}

func TestCloseWipesKey(t *testing.T) {
	m := newVolume(t, 1<<20, FormatOptions{})
	d, err := OpenDisk(m, testPass, Options{})
	if err != nil {
		t.Fatal(err)
	}
	key, ek, dk := d.key, d.c.ek, d.c.dk
	if allZero(key) {
		t.Fatal("the volume key is zero before Close")
	}
	if haveAESNI && (allZero(ek) || allZero(dk)) {
		t.Fatal("the AES-NI round keys are zero before Close")
	}
	d.Close()
	if !allZero(key[:cap(key)]) {
		t.Error("Close left the volume key in memory")
	}
	if !allZero(ek) || !allZero(dk) {
		t.Error("Close left the AES-NI round keys in memory")
	}
	if _, err := d.ReadAt(make([]byte, 512), 0); !errors.Is(err, block.ErrClosed) {
		t.Errorf("read after Close: %v", err)
	}
}

func TestAF(t *testing.T) {
	h, _ := hashByName("sha256")
	for _, n := range []int{32, 33, 64, 100} {
		key := pattern(n, 3)[:n]
		split, err := afSplit(h, key, 4000)
		if err != nil {
			t.Fatal(err)
		}
		if got := afMerge(h, split, n, 4000); !bytes.Equal(got, key) {
			t.Fatalf("n=%d: merge(split(key)) != key", n)
		}
		split[5] ^= 1
		if got := afMerge(h, split, n, 4000); bytes.Equal(got, key) {
			t.Fatalf("n=%d: a damaged split key still merges to the key", n)
		}
	}
}

func TestFormatRefuses(t *testing.T) {
	m := blocktest.NewMem(FormatDataOffset + 4096)
	for _, o := range []FormatOptions{{SectorSize: 1000}, {KeyBits: 128}, {KDF: KDFParams{Type: "scrypt"}}, {KDF: KDFParams{Type: Argon2id, Memory: 1 << 30}}} {
		if err := Format(m, testPass, o); err == nil {
			t.Errorf("Format(%+v) succeeded", o)
		}
	}
	if err := Format(blocktest.NewMem(1<<20), testPass, FormatOptions{}); err == nil {
		t.Error("Format on a 1 MiB image succeeded")
	}
	if err := Format(m, nil, FormatOptions{KDF: fastPBKDF2}); err == nil {
		t.Error("Format with an empty passphrase succeeded")
	}
}

// keepOpen is a child that survives its parent's Close, so that a test can
// open it again.
type keepOpen struct{ *blocktest.Mem }

func (k *keepOpen) Close() error { return nil }

func init() { digestIterations = 1000 }

func flipByte(t *testing.T, m *keepOpen, off int64) {
	t.Helper()
	b := make([]byte, 1)
	m.ReadAt(b, off)
	b[0] ^= 0xff
	if _, err := m.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestDiscardReachesChild: with discard on, the whole sectors of a discard
// become zeroes in the child (storage can be freed, and they read back as
// zeroes); the partial sectors at the ends keep their data.
func TestDiscardReachesChild(t *testing.T) {
	m := newVolume(t, 64<<10, FormatOptions{SectorSize: 4096})
	b, err := Open(m, testPass, Options{Discard: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	data := pattern(64<<10, 4)
	b.WriteAt(data, 0)
	if err := b.(block.Discarder).Discard(100, 3*4096); err != nil {
		t.Fatal(err)
	}
	child := m.Bytes()[FormatDataOffset:]
	if !allZero(child[4096 : 3*4096]) {
		t.Error("the discarded whole sectors are not zero in the child")
	}
	if allZero(child[:4096]) || allZero(child[3*4096:4*4096]) {
		t.Error("a partly discarded sector was zeroed in the child")
	}
	got := make([]byte, 64<<10)
	b.ReadAt(got, 0)
	want := bytes.Clone(data)
	clear(want[4096 : 3*4096])
	if !bytes.Equal(got, want) {
		t.Error("after the discard the disk reads other than zeroes in the freed sectors and the old data elsewhere")
	}
}
