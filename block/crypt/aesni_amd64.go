//go:build amd64 && !purego

package crypt

import "golang.org/x/sys/cpu"

// haveAESNI selects the AES-NI XTS path (aesni_amd64.s).
var haveAESNI = cpu.X86.HasAES && cpu.X86.HasSSE2

// xtsEncAsm encrypts groups of 8 blocks: dst = E(src ^ tw) ^ tw, block by
// block, with the round keys xk of an nr-round AES. xtsDecAsm is the same
// with the decryption round keys and AESDEC.
//
//go:noescape
func xtsEncAsm(nr int, xk *byte, dst, src, tw *byte, groups int)

//go:noescape
func xtsDecAsm(nr int, xk *byte, dst, src, tw *byte, groups int)
