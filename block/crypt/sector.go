package crypt

import (
	"crypto/aes"
	"fmt"
	"runtime"
	"sync"

	"golang.org/x/crypto/xts"
)

// sectorCipher encrypts whole sectors with aes-xts-plain64: the XTS tweak
// of a sector is its position in 512-byte units from the start of the
// segment (plus the segment's iv_tweak), little-endian, which is what
// x/crypto/xts does with its sector number. LUKS2 counts the IV in 512-byte
// units whatever the sector size (dm-crypt without iv_large_sectors), so a
// 4096-byte sector's IV advances by 8.
type sectorCipher struct {
	x          *xts.Cipher
	sectorSize int
	ivTweak    uint64
}

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
	x, err := xts.NewCipher(aes.NewCipher, key)
	if err != nil {
		return nil, fmt.Errorf("crypt: %w", err)
	}
	return &sectorCipher{x: x, sectorSize: sectorSize, ivTweak: ivTweak}, nil
}

// iv returns the tweak of the sector that starts at byte off of the segment.
func (c *sectorCipher) iv(off int64) uint64 { return c.ivTweak + uint64(off)/512 }

// encrypt encrypts src, whole sectors starting at segment byte off, into
// dst (same length; they may be the same slice, not partly overlapping).
func (c *sectorCipher) encrypt(dst, src []byte, off int64) {
	ss := c.sectorSize
	for i := 0; i < len(src); i += ss {
		c.x.Encrypt(dst[i:i+ss], src[i:i+ss], c.iv(off+int64(i)))
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
		c.x.Decrypt(d, s, c.iv(off+int64(i)))
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
