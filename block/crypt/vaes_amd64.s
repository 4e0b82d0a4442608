//go:build amd64 && !purego

#include "textflag.h"

// XTS over VAES with 512-bit registers: each VAESENC works on four blocks,
// and four registers (16 blocks, 256 bytes) are in flight per group, twice
// the blocks per instruction of the AES-NI path (aesni_amd64.s) and with
// the tweaks kept in registers instead of a table computed in Go.
//
// The caller computes the first group's 16 tweaks (T·x^0 .. T·x^15, one per
// 128-bit lane of Z8-Z11). Each following group's are the previous ones
// times x^16 in GF(2^128) modulo x^128 + x^7 + x^2 + x + 1. With a lane as
// two little-endian 64-bit words (lo, hi), times x^16 is
//
//	hi' = hi<<16 | lo>>48
//	lo' = lo<<16 ^ clmul(hi>>48, 0x87)
//
// where the carry-less product of 16 bits by 8 fits in the low word, so no
// second reduction is needed.

DATA xtsPoly<>+0(SB)/8, $0x87
DATA xtsPoly<>+8(SB)/8, $0
GLOBL xtsPoly<>(SB), RODATA|NOPTR, $16

// func xtsEncVAES(nr int, xk *byte, dst *byte, src *byte, tw *byte, groups int)
TEXT ·xtsEncVAES(SB), NOSPLIT, $0-48
	MOVQ nr+0(FP), CX
	MOVQ xk+8(FP), AX
	MOVQ dst+16(FP), DI
	MOVQ src+24(FP), SI
	MOVQ tw+32(FP), DX
	MOVQ groups+40(FP), BX
	TESTQ BX, BX
	JZ xtsEncVAES_done
	VMOVDQU64 0(DX), Z8
	VMOVDQU64 64(DX), Z9
	VMOVDQU64 128(DX), Z10
	VMOVDQU64 192(DX), Z11
	VBROADCASTI32X4 xtsPoly<>(SB), Z23
xtsEncVAES_loop:
	VMOVDQU64 0(SI), Z0
	VMOVDQU64 64(SI), Z1
	VMOVDQU64 128(SI), Z2
	VMOVDQU64 192(SI), Z3
	VPXORQ Z8, Z0, Z0
	VPXORQ Z9, Z1, Z1
	VPXORQ Z10, Z2, Z2
	VPXORQ Z11, Z3, Z3
	VBROADCASTI32X4 (AX), Z16
	VPXORQ Z16, Z0, Z0
	VPXORQ Z16, Z1, Z1
	VPXORQ Z16, Z2, Z2
	VPXORQ Z16, Z3, Z3
	MOVQ AX, R8
	MOVQ CX, R9
	DECQ R9
xtsEncVAES_round:
	ADDQ $16, R8
	VBROADCASTI32X4 (R8), Z16
	VAESENC Z16, Z0, Z0
	VAESENC Z16, Z1, Z1
	VAESENC Z16, Z2, Z2
	VAESENC Z16, Z3, Z3
	DECQ R9
	JNZ xtsEncVAES_round
	ADDQ $16, R8
	VBROADCASTI32X4 (R8), Z16
	VAESENCLAST Z16, Z0, Z0
	VAESENCLAST Z16, Z1, Z1
	VAESENCLAST Z16, Z2, Z2
	VAESENCLAST Z16, Z3, Z3
	VPXORQ Z8, Z0, Z0
	VMOVDQU64 Z0, 0(DI)
	VPXORQ Z9, Z1, Z1
	VMOVDQU64 Z1, 64(DI)
	VPXORQ Z10, Z2, Z2
	VMOVDQU64 Z2, 128(DI)
	VPXORQ Z11, Z3, Z3
	VMOVDQU64 Z3, 192(DI)
	// The next group's tweaks: each lane times x^16 (see the file comment).
	VPSRLQ $48, Z8, Z21
	VPSLLQ $16, Z8, Z8
	VPCLMULQDQ $0x01, Z23, Z21, Z22
	VPSLLDQ $8, Z21, Z21
	VPXORQ Z21, Z8, Z8
	VPXORQ Z22, Z8, Z8
	VPSRLQ $48, Z9, Z21
	VPSLLQ $16, Z9, Z9
	VPCLMULQDQ $0x01, Z23, Z21, Z22
	VPSLLDQ $8, Z21, Z21
	VPXORQ Z21, Z9, Z9
	VPXORQ Z22, Z9, Z9
	VPSRLQ $48, Z10, Z21
	VPSLLQ $16, Z10, Z10
	VPCLMULQDQ $0x01, Z23, Z21, Z22
	VPSLLDQ $8, Z21, Z21
	VPXORQ Z21, Z10, Z10
	VPXORQ Z22, Z10, Z10
	VPSRLQ $48, Z11, Z21
	VPSLLQ $16, Z11, Z11
	VPCLMULQDQ $0x01, Z23, Z21, Z22
	VPSLLDQ $8, Z21, Z21
	VPXORQ Z21, Z11, Z11
	VPXORQ Z22, Z11, Z11
	ADDQ $256, SI
	ADDQ $256, DI
	DECQ BX
	JNZ xtsEncVAES_loop
xtsEncVAES_done:
	VZEROUPPER
	RET

// func xtsDecVAES(nr int, xk *byte, dst *byte, src *byte, tw *byte, groups int)
TEXT ·xtsDecVAES(SB), NOSPLIT, $0-48
	MOVQ nr+0(FP), CX
	MOVQ xk+8(FP), AX
	MOVQ dst+16(FP), DI
	MOVQ src+24(FP), SI
	MOVQ tw+32(FP), DX
	MOVQ groups+40(FP), BX
	TESTQ BX, BX
	JZ xtsDecVAES_done
	VMOVDQU64 0(DX), Z8
	VMOVDQU64 64(DX), Z9
	VMOVDQU64 128(DX), Z10
	VMOVDQU64 192(DX), Z11
	VBROADCASTI32X4 xtsPoly<>(SB), Z23
xtsDecVAES_loop:
	VMOVDQU64 0(SI), Z0
	VMOVDQU64 64(SI), Z1
	VMOVDQU64 128(SI), Z2
	VMOVDQU64 192(SI), Z3
	VPXORQ Z8, Z0, Z0
	VPXORQ Z9, Z1, Z1
	VPXORQ Z10, Z2, Z2
	VPXORQ Z11, Z3, Z3
	VBROADCASTI32X4 (AX), Z16
	VPXORQ Z16, Z0, Z0
	VPXORQ Z16, Z1, Z1
	VPXORQ Z16, Z2, Z2
	VPXORQ Z16, Z3, Z3
	MOVQ AX, R8
	MOVQ CX, R9
	DECQ R9
xtsDecVAES_round:
	ADDQ $16, R8
	VBROADCASTI32X4 (R8), Z16
	VAESDEC Z16, Z0, Z0
	VAESDEC Z16, Z1, Z1
	VAESDEC Z16, Z2, Z2
	VAESDEC Z16, Z3, Z3
	DECQ R9
	JNZ xtsDecVAES_round
	ADDQ $16, R8
	VBROADCASTI32X4 (R8), Z16
	VAESDECLAST Z16, Z0, Z0
	VAESDECLAST Z16, Z1, Z1
	VAESDECLAST Z16, Z2, Z2
	VAESDECLAST Z16, Z3, Z3
	VPXORQ Z8, Z0, Z0
	VMOVDQU64 Z0, 0(DI)
	VPXORQ Z9, Z1, Z1
	VMOVDQU64 Z1, 64(DI)
	VPXORQ Z10, Z2, Z2
	VMOVDQU64 Z2, 128(DI)
	VPXORQ Z11, Z3, Z3
	VMOVDQU64 Z3, 192(DI)
	// The next group's tweaks: each lane times x^16 (see the file comment).
	VPSRLQ $48, Z8, Z21
	VPSLLQ $16, Z8, Z8
	VPCLMULQDQ $0x01, Z23, Z21, Z22
	VPSLLDQ $8, Z21, Z21
	VPXORQ Z21, Z8, Z8
	VPXORQ Z22, Z8, Z8
	VPSRLQ $48, Z9, Z21
	VPSLLQ $16, Z9, Z9
	VPCLMULQDQ $0x01, Z23, Z21, Z22
	VPSLLDQ $8, Z21, Z21
	VPXORQ Z21, Z9, Z9
	VPXORQ Z22, Z9, Z9
	VPSRLQ $48, Z10, Z21
	VPSLLQ $16, Z10, Z10
	VPCLMULQDQ $0x01, Z23, Z21, Z22
	VPSLLDQ $8, Z21, Z21
	VPXORQ Z21, Z10, Z10
	VPXORQ Z22, Z10, Z10
	VPSRLQ $48, Z11, Z21
	VPSLLQ $16, Z11, Z11
	VPCLMULQDQ $0x01, Z23, Z21, Z22
	VPSLLDQ $8, Z21, Z21
	VPXORQ Z21, Z11, Z11
	VPXORQ Z22, Z11, Z11
	ADDQ $256, SI
	ADDQ $256, DI
	DECQ BX
	JNZ xtsDecVAES_loop
xtsDecVAES_done:
	VZEROUPPER
	RET
