package crypt

import (
	"crypto/rand"
	"encoding/binary"
	"hash"
)

// The anti-forensic splitter (LUKS1's AF, which LUKS2 keeps): a key of n
// bytes is stored as stripes blocks of n bytes such that losing any one
// block loses the key. Blocks 0..stripes-2 are random; the last is the key
// XORed with the diffusion of all the others, so overwriting a keyslot's
// area even partly destroys the key.

// diffuse replaces each hash-sized chunk j of b with H(be32(j) || chunk),
// truncated to the chunk's length.
func diffuse(newHash func() hash.Hash, b []byte) {
	h := newHash()
	ds := h.Size()
	var idx [4]byte
	var sum []byte
	for j, off := 0, 0; off < len(b); j, off = j+1, off+ds {
		end := min(off+ds, len(b))
		h.Reset()
		binary.BigEndian.PutUint32(idx[:], uint32(j))
		h.Write(idx[:])
		h.Write(b[off:end])
		sum = h.Sum(sum[:0])
		copy(b[off:end], sum)
	}
	clear(sum)
}

func xorInto(dst, src []byte) {
	for i := range dst {
		dst[i] ^= src[i]
	}
}

// afSplit returns key split into stripes blocks.
func afSplit(newHash func() hash.Hash, key []byte, stripes int) ([]byte, error) {
	n := len(key)
	out := make([]byte, n*stripes)
	d := make([]byte, n)
	defer clear(d)
	if _, err := rand.Read(out[:n*(stripes-1)]); err != nil {
		return nil, err
	}
	for i := 0; i < stripes-1; i++ {
		xorInto(d, out[i*n:(i+1)*n])
		diffuse(newHash, d)
	}
	last := out[(stripes-1)*n:]
	copy(last, d)
	xorInto(last, key)
	return out, nil
}

// afMerge recovers the n-byte key from its split form.
func afMerge(newHash func() hash.Hash, split []byte, n, stripes int) []byte {
	d := make([]byte, n)
	for i := 0; i < stripes-1; i++ {
		xorInto(d, split[i*n:(i+1)*n])
		diffuse(newHash, d)
	}
	xorInto(d, split[(stripes-1)*n:stripes*n])
	return d
}
