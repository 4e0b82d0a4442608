package crypt

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strconv"

	"golang.org/x/crypto/argon2"
)

// KDF types.
const (
	Argon2id = "argon2id"
	PBKDF2   = "pbkdf2"
)

// KDFParams choose how a new keyslot derives its key from the passphrase.
// Zero fields take the defaults of DefaultKDF.
type KDFParams struct {
	Type string // Argon2id (default) or PBKDF2
	// Argon2id: passes, memory in KiB, threads.
	Time, Memory, CPUs uint32
	// PBKDF2: hash (sha256 default) and iteration count.
	Hash       string
	Iterations uint32
}

// Defaults for new keyslots. cryptsetup benchmarks the machine for a
// 2-second unlock; vio uses fixed costs in the same range, so that the cost
// of an attack does not depend on the machine the image was made on.
const (
	DefaultArgonTime   = 4
	DefaultArgonMemory = 256 << 10 // KiB
	DefaultIterations  = 600_000
	defaultStripes     = 4000
)

// digestIterations is the cost of checking a candidate volume key (a
// variable so that tests can lower it).
var digestIterations uint32 = 100_000

// withDefaults fills p's zero fields and checks it.
func (p KDFParams) withDefaults() (KDFParams, error) {
	if p.Type == "" {
		p.Type = Argon2id
	}
	switch p.Type {
	case Argon2id:
		if p.Time == 0 {
			p.Time = DefaultArgonTime
		}
		if p.Memory == 0 {
			p.Memory = DefaultArgonMemory
		}
		if p.CPUs == 0 {
			p.CPUs = uint32(min(4, runtime.NumCPU()))
		}
	case PBKDF2:
		if p.Hash == "" {
			p.Hash = "sha256"
		}
		if p.Iterations == 0 {
			p.Iterations = DefaultIterations
		}
	default:
		return p, fmt.Errorf("crypt: KDF %q is not supported: use argon2id or pbkdf2", p.Type)
	}
	k := KDF{Type: p.Type, Hash: p.Hash, Iterations: p.Iterations, Time: p.Time, Memory: p.Memory, CPUs: p.CPUs, Salt: []byte{0}}
	if p.Type == PBKDF2 {
		k.Time, k.Memory, k.CPUs = 0, 0, 0
	} else {
		k.Hash, k.Iterations = "", 0
	}
	if err := k.check(); err != nil {
		return p, fmt.Errorf("crypt: %w", err)
	}
	return p, nil
}

func (p KDFParams) kdf() (KDF, error) {
	salt := make([]byte, 32)
	if _, err := rand.Read(salt); err != nil {
		return KDF{}, err
	}
	if p.Type == PBKDF2 {
		return KDF{Type: PBKDF2, Hash: p.Hash, Iterations: p.Iterations, Salt: salt}, nil
	}
	return KDF{Type: Argon2id, Time: p.Time, Memory: p.Memory, CPUs: p.CPUs, Salt: salt}, nil
}

// derive computes the n-byte key f derives from passphrase.
func (f *KDF) derive(passphrase []byte, n int) ([]byte, error) {
	switch f.Type {
	case "pbkdf2":
		h, _ := hashByName(f.Hash)
		return pbkdf2.Key(h, string(passphrase), f.Salt, int(f.Iterations), n)
	case "argon2id":
		return argon2.IDKey(passphrase, f.Salt, f.Time, f.Memory, uint8(f.CPUs), uint32(n)), nil
	case "argon2i":
		return argon2.Key(passphrase, f.Salt, f.Time, f.Memory, uint8(f.CPUs), uint32(n)), nil
	}
	return nil, fmt.Errorf("crypt: kdf %q is not supported", f.Type)
}

// digestOf computes a digest's check value for a candidate volume key.
func (d *Digest) of(key []byte) ([]byte, error) {
	h, _ := hashByName(d.Hash)
	return pbkdf2.Key(h, string(key), d.Salt, int(d.Iterations), len(d.Digest))
}

// ErrPassphrase is returned when no keyslot opens with the passphrase.
var ErrPassphrase = errors.New("crypt: no keyslot opens with this passphrase")

// areaMaterialSize is the split key's size rounded up to whole 512-byte
// sectors, the part of a keyslot's area that holds it.
func (k *Keyslot) materialSize() int {
	n := k.KeySize * k.AF.Stripes
	return (n + sectorSizeMin - 1) / sectorSizeMin * sectorSizeMin
}

// unlockSlot tries passphrase on keyslot id and returns the volume key when
// it opens.
func (v *Volume) unlockSlot(id string, passphrase []byte) ([]byte, error) {
	m := v.hdr.meta
	k := m.Keyslots[id]
	d := m.segmentDigest(id)
	if d == nil {
		return nil, fmt.Errorf("crypt: keyslot %s has no digest for the data segment", id)
	}
	if uint64(k.materialSize()) > uint64(k.Area.Size) {
		return nil, fmt.Errorf("crypt: keyslot %s: the split key does not fit its area", id)
	}
	dk, err := k.KDF.derive(passphrase, k.Area.KeySize)
	if err != nil {
		return nil, err
	}
	defer clear(dk)
	c, err := newSectorCipher(k.Area.Encryption, dk, sectorSizeMin, 0)
	if err != nil {
		return nil, fmt.Errorf("crypt: keyslot %s: %w", id, err)
	}
	buf := make([]byte, k.materialSize())
	defer clear(buf)
	if _, err := v.dev.ReadAt(buf, int64(k.Area.Offset)); err != nil {
		return nil, fmt.Errorf("crypt: reading keyslot %s: %w", id, err)
	}
	// The keyslot area is encrypted with IVs counted from its start, and
	// without the zero-sector rule of the data path.
	for i := 0; i < len(buf); i += sectorSizeMin {
		c.xtsSector(buf[i:i+sectorSizeMin], buf[i:i+sectorSizeMin], uint64(i/sectorSizeMin), true)
	}
	h, _ := hashByName(k.AF.Hash)
	key := afMerge(h, buf, k.KeySize, k.AF.Stripes)
	sum, err := d.of(key)
	if err != nil {
		clear(key)
		return nil, err
	}
	if subtle.ConstantTimeCompare(sum, d.Digest) != 1 {
		clear(key)
		return nil, ErrPassphrase
	}
	return key, nil
}

// Unlock returns the volume key and the keyslot that passphrase opens. The
// caller wipes the key (clear) when done.
func (v *Volume) Unlock(passphrase []byte) (key []byte, slot int, err error) {
	var firstErr error
	for _, id := range v.hdr.meta.keyslotIDs() {
		key, err := v.unlockSlot(id, passphrase)
		if err == nil {
			n, _ := strconv.Atoi(id)
			return key, n, nil
		}
		if !errors.Is(err, ErrPassphrase) && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return nil, 0, fmt.Errorf("%w (and %w)", ErrPassphrase, firstErr)
	}
	return nil, 0, ErrPassphrase
}

// writeKeyslot stores key in a new keyslot id under passphrase with KDF
// params p, in area [off, off+size), and returns it (not yet in the
// metadata).
func (v *Volume) writeKeyslot(key, passphrase []byte, p KDFParams, off, size int64) (*Keyslot, error) {
	kdf, err := p.kdf()
	if err != nil {
		return nil, err
	}
	k := &Keyslot{
		Type: "luks2", KeySize: len(key),
		Area: Area{Type: "raw", Offset: U64(off), Size: U64(size), Encryption: supportedCipher, KeySize: 64},
		KDF:  kdf,
		AF:   AF{Type: "luks1", Stripes: defaultStripes, Hash: "sha256"},
	}
	h, _ := hashByName(k.AF.Hash)
	split, err := afSplit(h, key, k.AF.Stripes)
	if err != nil {
		return nil, err
	}
	defer clear(split)
	buf := make([]byte, k.materialSize())
	copy(buf, split)
	dk, err := k.KDF.derive(passphrase, k.Area.KeySize)
	if err != nil {
		return nil, err
	}
	defer clear(dk)
	c, err := newSectorCipher(k.Area.Encryption, dk, sectorSizeMin, 0)
	if err != nil {
		return nil, err
	}
	for i := 0; i < len(buf); i += sectorSizeMin {
		c.xtsSector(buf[i:i+sectorSizeMin], buf[i:i+sectorSizeMin], uint64(i/sectorSizeMin), false)
	}
	if _, err := v.dev.WriteAt(buf, off); err != nil {
		return nil, fmt.Errorf("crypt: writing the keyslot: %w", err)
	}
	if err := v.dev.Flush(); err != nil {
		return nil, fmt.Errorf("crypt: flushing the keyslot: %w", err)
	}
	return k, nil
}

// keyslotAreaSize is the area a keyslot with this key size needs: its split
// key rounded up to 4096 bytes (258048 bytes for a 64-byte key, as
// cryptsetup allocates).
func keyslotAreaSize(keySize int) int64 {
	n := int64(keySize * defaultStripes)
	return (n + keyslotAlignment - 1) / keyslotAlignment * keyslotAlignment
}

// freeArea finds the lowest gap of size bytes in the keyslots area.
func (m *Metadata) freeArea(hdrSize, size int64) (int64, bool) {
	start := 2 * hdrSize
	end := start + int64(m.Config.KeyslotsSize)
	type span struct{ lo, hi int64 }
	var used []span
	for _, k := range m.Keyslots {
		used = append(used, span{int64(k.Area.Offset), int64(k.Area.Offset + k.Area.Size)})
	}
	sort.Slice(used, func(i, j int) bool { return used[i].lo < used[j].lo })
	at := start
	for _, u := range used {
		if u.lo-at >= size {
			break
		}
		at = max(at, (u.hi+keyslotAlignment-1)/keyslotAlignment*keyslotAlignment)
	}
	return at, at+size <= end
}

// AddKey adds a keyslot for newPassphrase, unlocking the volume key with
// passphrase, and returns the new keyslot's number.
func (v *Volume) AddKey(passphrase, newPassphrase []byte, p KDFParams) (int, error) {
	p, err := p.withDefaults()
	if err != nil {
		return 0, err
	}
	key, _, err := v.Unlock(passphrase)
	if err != nil {
		return 0, err
	}
	defer clear(key)
	m := v.hdr.meta
	id := -1
	for i := 0; i < maxKeyslots; i++ {
		if m.Keyslots[strconv.Itoa(i)] == nil {
			id = i
			break
		}
	}
	if id < 0 {
		return 0, fmt.Errorf("crypt: all %d keyslots are in use: remove one first", maxKeyslots)
	}
	size := keyslotAreaSize(len(key))
	off, ok := m.freeArea(v.hdr.hdrSize, size)
	if !ok {
		return 0, errors.New("crypt: the keyslots area has no room for another keyslot: remove one first")
	}
	k, err := v.writeKeyslot(key, newPassphrase, p, off, size)
	if err != nil {
		return 0, err
	}
	sid := strconv.Itoa(id)
	d := m.segmentDigest(firstSlot(m))
	if d == nil {
		return 0, errors.New("crypt: the image has no digest for its data segment")
	}
	m.Keyslots[sid] = k
	d.Keyslots = append(d.Keyslots, sid)
	if err := v.writeHeader(); err != nil {
		return 0, err
	}
	return id, nil
}

// firstSlot returns an id of a keyslot that has a segment digest (the one
// Unlock just used qualifies).
func firstSlot(m *Metadata) string {
	for _, d := range m.Digests {
		if contains(d.Segments, "0") && len(d.Keyslots) > 0 {
			return d.Keyslots[0]
		}
	}
	return ""
}

// RemoveKey removes the keyslot passphrase opens and overwrites its area
// with random bytes. It refuses to remove the last keyslot unless last is
// set: without a keyslot the data can never be decrypted again.
func (v *Volume) RemoveKey(passphrase []byte, last bool) (int, error) {
	key, slot, err := v.Unlock(passphrase)
	if err != nil {
		return 0, err
	}
	clear(key)
	m := v.hdr.meta
	if len(m.Keyslots) == 1 && !last {
		return 0, fmt.Errorf("crypt: keyslot %d is the image's last: removing it makes the data unreadable for ever", slot)
	}
	sid := strconv.Itoa(slot)
	k := m.Keyslots[sid]
	delete(m.Keyslots, sid)
	for _, d := range m.Digests {
		out := d.Keyslots[:0]
		for _, s := range d.Keyslots {
			if s != sid {
				out = append(out, s)
			}
		}
		d.Keyslots = out
	}
	if err := v.writeHeader(); err != nil {
		return 0, err
	}
	junk := make([]byte, k.Area.Size)
	if _, err := rand.Read(junk); err != nil {
		return 0, err
	}
	if _, err := v.dev.WriteAt(junk, int64(k.Area.Offset)); err != nil {
		return 0, fmt.Errorf("crypt: keyslot %d is removed but wiping its area failed: %w", slot, err)
	}
	if err := v.dev.Flush(); err != nil {
		return 0, fmt.Errorf("crypt: keyslot %d is removed but flushing its wiped area failed: %w", slot, err)
	}
	return slot, nil
}
