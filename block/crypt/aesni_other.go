//go:build !amd64 || purego

package crypt

const haveAESNI = false

func xtsEncAsm(nr int, xk *byte, dst, src, tw *byte, groups int) { panic("crypt: no AES-NI") }
func xtsDecAsm(nr int, xk *byte, dst, src, tw *byte, groups int) { panic("crypt: no AES-NI") }

const haveVAES = false

func xtsEncVAES(nr int, xk *byte, dst, src, tw *byte, groups int) { panic("crypt: no VAES") }
func xtsDecVAES(nr int, xk *byte, dst, src, tw *byte, groups int) { panic("crypt: no VAES") }
