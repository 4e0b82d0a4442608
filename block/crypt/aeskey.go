package crypt

import "encoding/binary"

// The AES key schedule, for the AES-NI XTS path (aesni_amd64.s), which
// needs the round keys in memory and cannot reach crypto/aes's. The
// decryption schedule is the "equivalent inverse cipher" one AESDEC
// expects: the encryption round keys in reverse, the inner ones passed
// through InvMixColumns.

var sbox = func() (s [256]byte) {
	mul := func(a, b byte) (p byte) {
		for ; b != 0; b >>= 1 {
			if b&1 != 0 {
				p ^= a
			}
			a = a<<1 ^ byte(int8(a)>>7)&0x1b
		}
		return p
	}
	for x := 0; x < 256; x++ {
		inv := byte(0)
		for y := 1; y < 256 && x != 0; y++ {
			if mul(byte(x), byte(y)) == 1 {
				inv = byte(y)
				break
			}
		}
		rot := func(b byte, n uint) byte { return b<<n | b>>(8-n) }
		s[x] = inv ^ rot(inv, 1) ^ rot(inv, 2) ^ rot(inv, 3) ^ rot(inv, 4) ^ 0x63
	}
	return s
}()

func subWord(w uint32) uint32 {
	return uint32(sbox[w>>24])<<24 | uint32(sbox[w>>16&0xff])<<16 | uint32(sbox[w>>8&0xff])<<8 | uint32(sbox[w&0xff])
}

// expandKey returns the encryption and decryption round keys of an AES
// key (16, 24 or 32 bytes), 16 bytes per round, and the number of rounds.
func expandKey(key []byte) (enc, dec []byte, rounds int) {
	nk := len(key) / 4
	rounds = nk + 6
	w := make([]uint32, 4*(rounds+1))
	for i := 0; i < nk; i++ {
		w[i] = binary.BigEndian.Uint32(key[4*i:])
	}
	rcon := uint32(1)
	for i := nk; i < len(w); i++ {
		t := w[i-1]
		switch {
		case i%nk == 0:
			t = subWord(t<<8|t>>24) ^ rcon<<24
			rcon <<= 1
			if rcon&0x100 != 0 {
				rcon ^= 0x11b
			}
		case nk > 6 && i%nk == 4:
			t = subWord(t)
		}
		w[i] = w[i-nk] ^ t
	}
	enc = make([]byte, 4*len(w))
	for i, x := range w {
		binary.BigEndian.PutUint32(enc[4*i:], x)
	}
	clear(w)
	dec = make([]byte, len(enc))
	for r := 0; r <= rounds; r++ {
		rk := dec[16*r : 16*r+16]
		copy(rk, enc[16*(rounds-r):])
		if r != 0 && r != rounds {
			invMixColumns(rk)
		}
	}
	return enc, dec, rounds
}

func invMixColumns(rk []byte) {
	mul := func(a, b byte) (p byte) {
		for ; b != 0; b >>= 1 {
			if b&1 != 0 {
				p ^= a
			}
			a = a<<1 ^ byte(int8(a)>>7)&0x1b
		}
		return p
	}
	for c := 0; c < 16; c += 4 {
		a0, a1, a2, a3 := rk[c], rk[c+1], rk[c+2], rk[c+3]
		rk[c] = mul(a0, 14) ^ mul(a1, 11) ^ mul(a2, 13) ^ mul(a3, 9)
		rk[c+1] = mul(a0, 9) ^ mul(a1, 14) ^ mul(a2, 11) ^ mul(a3, 13)
		rk[c+2] = mul(a0, 13) ^ mul(a1, 9) ^ mul(a2, 14) ^ mul(a3, 11)
		rk[c+3] = mul(a0, 11) ^ mul(a1, 13) ^ mul(a2, 9) ^ mul(a3, 14)
	}
}
