package crypt

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
)

// sectorCipher encrypts whole sectors with aes-xts-plain64: the XTS tweak
// of a sector is its position in 512-byte units from the start of the
// segment (plus the segment's iv_tweak), little-endian (plain64). LUKS2
// counts the IV in 512-byte units whatever the sector size (dm-crypt
// without iv_large_sectors), so a 4096-byte sector's IV advances by 8.
//
// The XTS loop is this package's own rather than golang.org/x/crypto/xts's:
// on amd64 with AES-NI eight blocks go through the AES unit at once
// (aesni_amd64.s), about 8 times x/crypto/xts's speed, which encrypts one
// block per call; elsewhere a portable loop keeps the tweak in two 64-bit
// words (twice x/crypto/xts's speed). TestXTSMatchesXCrypto holds both to
// x/crypto/xts (and that to IEEE 1619's vectors) for both key sizes and
// every sector size.
type sectorCipher struct {
	k1, k2     cipher.Block
	sectorSize int
	ivTweak    uint64
	// The AES-NI path (aesni_amd64.s): K1's round keys, ours to wipe.
	asm    bool
	ek, dk []byte
	rounds int
	// vaes: the 512-bit VAES path (vaes_amd64.s) on the same round keys.
	vaes bool
}

// useAESNI and useVAES can be cleared by tests to exercise the other paths.
var (
	useAESNI = haveAESNI
	useVAES  = haveVAES
)

// newSectorCipher returns the cipher for spec (only aes-xts-plain64) with
// key (32 bytes for AES-128-XTS, 64 for AES-256-XTS). The caller keeps and
// wipes key.
func newSectorCipher(spec string, key []byte, sectorSize int, ivTweak uint64) (*sectorCipher, error) {
	if spec != supportedCipher {
		return nil, fmt.Errorf("crypt: cipher %q is not supported (vio supports %s)", spec, supportedCipher)
	}
	if len(key) != 32 && len(key) != 64 {
		return nil, fmt.Errorf("crypt: an %s key is 32 or 64 bytes, not %d", spec, len(key))
	}
	k1, err := aes.NewCipher(key[:len(key)/2])
	if err != nil {
		return nil, fmt.Errorf("crypt: %w", err)
	}
	k2, err := aes.NewCipher(key[len(key)/2:])
	if err != nil {
		return nil, fmt.Errorf("crypt: %w", err)
	}
	c := &sectorCipher{k1: k1, k2: k2, sectorSize: sectorSize, ivTweak: ivTweak}
	if useAESNI {
		c.asm = true
		c.vaes = useVAES
		c.ek, c.dk, c.rounds = expandKey(key[:len(key)/2])
	}
	return c, nil
}

// wipe clears the round keys this package holds (crypto/aes's cannot be
// reached).
func (c *sectorCipher) wipe() {
	clear(c.ek)
	clear(c.dk)
	c.k1, c.k2, c.ek, c.dk = nil, nil, nil, nil
}

// xtsSector encrypts (or decrypts) one sector of src into dst with tweak
// iv. len(src) is a multiple of 16; dst and src are equal or disjoint.
func (c *sectorCipher) xtsSector(dst, src []byte, iv uint64, decrypt bool) {
	var t [16]byte
	binary.LittleEndian.PutUint64(t[:8], iv)
	c.k2.Encrypt(t[:], t[:])
	t0 := binary.LittleEndian.Uint64(t[:8])
	t1 := binary.LittleEndian.Uint64(t[8:])
	if c.vaes && len(src)%vaesGroup == 0 {
		// The first group's tweaks; the assembly derives the rest.
		var tw [vaesGroup]byte
		for i := 0; i < vaesGroup; i += 16 {
			binary.LittleEndian.PutUint64(tw[i:], t0)
			binary.LittleEndian.PutUint64(tw[i+8:], t1)
			carry := t1 >> 63
			t1 = t1<<1 | t0>>63
			t0 = t0<<1 ^ carry*0x87
		}
		if decrypt {
			xtsDecVAES(c.rounds, &c.dk[0], &dst[0], &src[0], &tw[0], len(src)/vaesGroup)
		} else {
			xtsEncVAES(c.rounds, &c.ek[0], &dst[0], &src[0], &tw[0], len(src)/vaesGroup)
		}
		return
	}
	if c.asm && len(src)%128 == 0 {
		// Tweaks for up to asmChunk bytes at a time: a small buffer, so
		// that zeroing it costs little next to the blocks it serves.
		var tw [asmChunk]byte
		for off := 0; off < len(src); off += asmChunk {
			n := min(asmChunk, len(src)-off)
			for i := 0; i < n; i += 16 {
				binary.LittleEndian.PutUint64(tw[i:], t0)
				binary.LittleEndian.PutUint64(tw[i+8:], t1)
				carry := t1 >> 63
				t1 = t1<<1 | t0>>63
				t0 = t0<<1 ^ carry*0x87
			}
			if decrypt {
				xtsDecAsm(c.rounds, &c.dk[0], &dst[off], &src[off], &tw[0], n/128)
			} else {
				xtsEncAsm(c.rounds, &c.ek[0], &dst[off], &src[off], &tw[0], n/128)
			}
		}
		return
	}
	for i := 0; i+16 <= len(src); i += 16 {
		s, d := src[i:i+16:i+16], dst[i:i+16:i+16]
		binary.LittleEndian.PutUint64(d[:8], binary.LittleEndian.Uint64(s[:8])^t0)
		binary.LittleEndian.PutUint64(d[8:], binary.LittleEndian.Uint64(s[8:])^t1)
		if decrypt {
			c.k1.Decrypt(d, d)
		} else {
			c.k1.Encrypt(d, d)
		}
		binary.LittleEndian.PutUint64(d[:8], binary.LittleEndian.Uint64(d[:8])^t0)
		binary.LittleEndian.PutUint64(d[8:], binary.LittleEndian.Uint64(d[8:])^t1)
		// t *= x in GF(2^128) modulo x^128 + x^7 + x^2 + x + 1.
		carry := t1 >> 63
		t1 = t1<<1 | t0>>63
		t0 = t0<<1 ^ carry*0x87
	}
}

// iv returns the tweak of the sector that starts at byte off of the segment.
func (c *sectorCipher) iv(off int64) uint64 { return c.ivTweak + uint64(off)/512 }

// encrypt encrypts src, whole sectors starting at segment byte off, into
// dst (same length; they may be the same slice, not partly overlapping).
func (c *sectorCipher) encrypt(dst, src []byte, off int64) {
	ss := c.sectorSize
	for i := 0; i < len(src); i += ss {
		c.xtsSector(dst[i:i+ss], src[i:i+ss], c.iv(off+int64(i)), false)
	}
}

// decrypt is encrypt's inverse. A sector whose ciphertext is all zero
// decrypts to zeroes (see the package comment).
func (c *sectorCipher) decrypt(dst, src []byte, off int64) {
	ss := c.sectorSize
	for i := 0; i < len(src); i += ss {
		s, d := src[i:i+ss], dst[i:i+ss]
		if allZero(s) {
			clear(d)
			continue
		}
		c.xtsSector(d, s, c.iv(off+int64(i)), true)
	}
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// vaesGroup is how many bytes the VAES path encrypts per loop: 16 blocks.
const vaesGroup = 256

// asmChunk is how many bytes the AES-NI path encrypts per call.
const asmChunk = 512

// parMin is the request size from which encryption is spread over several
// goroutines: below it, starting them costs more than it saves.
const parMin = 128 << 10

// encryptPar is encrypt, spread over the CPUs for large buffers.
func (c *sectorCipher) encryptPar(dst, src []byte, off int64) {
	c.par(dst, src, off, c.encrypt)
}

// decryptPar is decrypt, spread over the CPUs for large buffers.
func (c *sectorCipher) decryptPar(dst, src []byte, off int64) {
	c.par(dst, src, off, c.decrypt)
}

func (c *sectorCipher) par(dst, src []byte, off int64, f func(dst, src []byte, off int64)) {
	n := runtime.GOMAXPROCS(0)
	if len(src) < parMin || n < 2 {
		f(dst, src, off)
		return
	}
	sectors := len(src) / c.sectorSize
	n = min(n, sectors)
	per := (sectors + n - 1) / n * c.sectorSize
	var wg sync.WaitGroup
	for i := 0; i < len(src); i += per {
		j := min(i+per, len(src))
		wg.Go(func() { f(dst[i:j], src[i:j], off+int64(i)) })
	}
	wg.Wait()
}
