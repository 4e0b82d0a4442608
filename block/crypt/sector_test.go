package crypt

import (
	"bytes"
	"crypto/aes"
	"crypto/rand"
	"fmt"
	"testing"

	"golang.org/x/crypto/xts"
)

// TestXTSMatchesXCrypto holds the data path's XTS loop to
// golang.org/x/crypto/xts (itself tested against IEEE 1619's vectors):
// both key sizes, every sector size, tweaks with high bits set, both
// directions, in place and not.
func TestXTSMatchesXCrypto(t *testing.T) {
	if !haveAESNI {
		t.Log("no AES-NI here: only the portable loop is checked")
	}
	if !haveVAES {
		t.Log("no 512-bit VAES here: that path is not checked")
	}
	for _, p := range []struct{ aesni, vaes bool }{{false, false}, {haveAESNI, false}, {haveAESNI, haveVAES}} {
		useAESNI, useVAES = p.aesni, p.vaes
		t.Run(fmt.Sprintf("aesni=%v/vaes=%v", p.aesni, p.vaes), testXTSMatches)
	}
	useAESNI, useVAES = haveAESNI, haveVAES
}

func testXTSMatches(t *testing.T) {
	for _, klen := range []int{32, 64} {
		for _, ss := range []int{512, 1024, 2048, 4096} {
			key := make([]byte, klen)
			rand.Read(key)
			ref, err := xts.NewCipher(aes.NewCipher, key)
			if err != nil {
				t.Fatal(err)
			}
			c, err := newSectorCipher(supportedCipher, key, ss, 5)
			if err != nil {
				t.Fatal(err)
			}
			if c.asm != useAESNI {
				t.Fatalf("AES-NI path %v, want %v", c.asm, useAESNI)
			}
			plain := make([]byte, 4*ss)
			rand.Read(plain)
			for _, off := range []int64{0, int64(ss), 1 << 40} {
				want := make([]byte, len(plain))
				for i := 0; i < len(plain); i += ss {
					ref.Encrypt(want[i:i+ss], plain[i:i+ss], 5+uint64(off+int64(i))/512)
				}
				got := make([]byte, len(plain))
				c.encrypt(got, plain, off)
				if !bytes.Equal(got, want) {
					t.Fatalf("key %d, sector %d, offset %d: ciphertext differs from x/crypto/xts", klen, ss, off)
				}
				inPlace := bytes.Clone(plain)
				c.encryptPar(inPlace, inPlace, off)
				if !bytes.Equal(inPlace, want) {
					t.Fatalf("key %d, sector %d: in-place ciphertext differs", klen, ss)
				}
				c.decryptPar(inPlace, inPlace, off)
				if !bytes.Equal(inPlace, plain) {
					t.Fatalf("key %d, sector %d: decrypt(encrypt(p)) != p", klen, ss)
				}
			}
		}
	}
}

// TestLargeRequestsParallel: requests above parMin are split over
// goroutines; the split must not move a sector's tweak.
func TestLargeRequestsParallel(t *testing.T) {
	key := make([]byte, 64)
	rand.Read(key)
	c, _ := newSectorCipher(supportedCipher, key, 4096, 0)
	for _, n := range []int{parMin, parMin + 4096, 1 << 20} {
		p := make([]byte, n)
		rand.Read(p)
		serial, par := make([]byte, n), make([]byte, n)
		c.encrypt(serial, p, 8192)
		c.encryptPar(par, p, 8192)
		if !bytes.Equal(serial, par) {
			t.Fatalf("%d bytes: the parallel path encrypts differently", n)
		}
	}
}
