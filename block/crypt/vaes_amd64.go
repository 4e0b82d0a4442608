//go:build amd64 && !purego

package crypt

import "golang.org/x/sys/cpu"

// haveVAES selects the 512-bit VAES XTS path (vaes_amd64.s): AVX-512
// (F and BW, with the OS saving ZMM state: x/sys/cpu checks it), VAES and
// VPCLMULQDQ.
var haveVAES = haveAESNI && cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW &&
	cpu.X86.HasAVX512VAES && cpu.X86.HasAVX512VPCLMULQDQ

// xtsEncVAES encrypts groups of 16 blocks (256 bytes): dst = E(src ^ t) ^ t
// block by block, with the round keys xk of an nr-round AES. tw holds the
// first group's 16 tweaks; later ones are derived in registers. xtsDecVAES
// is the same with the decryption round keys.
//
//go:noescape
func xtsEncVAES(nr int, xk *byte, dst, src, tw *byte, groups int)

//go:noescape
func xtsDecVAES(nr int, xk *byte, dst, src, tw *byte, groups int)
