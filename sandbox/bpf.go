package sandbox

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// A small assembler for classic BPF as seccomp runs it: the filter reads
// struct seccomp_data (nr, arch, instruction pointer, six arguments) with
// absolute loads, compares, and returns an action. Jumps are written to
// labels and resolved at the end, so the program reads top to bottom.

// Offsets into struct seccomp_data (<linux/seccomp.h>), little-endian.
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
)

// argLow is the offset of the low 32 bits of argument i. Every argument
// vio checks is an int or an unsigned int to the kernel (a flag word, a
// pid, an ioctl number, a protection mask whose bits are all low), so the
// kernel ignores the high half and so may the filter.
func argLow(i int) uint32 { return offArgs + 8*uint32(i) }

type label string

// insn is one instruction, its jumps still symbolic.
type insn struct {
	f      unix.SockFilter
	jt, jf label // "" is the next instruction
	at     label // a label for this instruction
}

type asm struct {
	prog []insn
	next label // label for the next instruction emitted
	n    int   // for fresh labels
}

func (a *asm) fresh(prefix string) label {
	a.n++
	return label(fmt.Sprintf("%s%d", prefix, a.n))
}

func (a *asm) emit(i insn) {
	i.at, a.next = a.next, ""
	a.prog = append(a.prog, i)
}

// mark labels the next instruction.
func (a *asm) mark(l label) {
	if a.next != "" {
		// Two labels on one instruction: emit nothing, alias instead.
		panic("sandbox: two labels on one BPF instruction")
	}
	a.next = l
}

func (a *asm) load(off uint32) {
	a.emit(insn{f: unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: off}})
}

func (a *asm) and(k uint32) {
	a.emit(insn{f: unix.SockFilter{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: k}})
}

// jeq jumps to jt if A == k, else to jf.
func (a *asm) jeq(k uint32, jt, jf label) {
	a.emit(insn{f: unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: k}, jt: jt, jf: jf})
}

// jset jumps to jt if A & k != 0, else to jf.
func (a *asm) jset(k uint32, jt, jf label) {
	a.emit(insn{f: unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, K: k}, jt: jt, jf: jf})
}

// jge jumps to jt if A >= k, else to jf.
func (a *asm) jge(k uint32, jt, jf label) {
	a.emit(insn{f: unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, K: k}, jt: jt, jf: jf})
}

// jump jumps to l whatever A holds (a JSET against no bits is never true;
// it keeps every jump in the jt/jf form the assembler resolves).
func (a *asm) jump(l label) { a.jset(0, "", l) }

func (a *asm) ret(action uint32) {
	a.emit(insn{f: unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: action}})
}

// assemble resolves the labels. Classic BPF jumps only forward, by at most
// 255 instructions; the filter keeps every jump inside one syscall's block.
func (a *asm) assemble() ([]unix.SockFilter, error) {
	if a.next != "" {
		return nil, fmt.Errorf("sandbox: BPF label %s marks no instruction", a.next)
	}
	at := map[label]int{}
	for i, in := range a.prog {
		if in.at != "" {
			at[in.at] = i
		}
	}
	out := make([]unix.SockFilter, len(a.prog))
	for i, in := range a.prog {
		f := in.f
		for _, j := range []struct {
			l   label
			dst *uint8
		}{{in.jt, &f.Jt}, {in.jf, &f.Jf}} {
			if j.l == "" {
				continue
			}
			t, ok := at[j.l]
			if !ok {
				return nil, fmt.Errorf("sandbox: BPF label %s is undefined", j.l)
			}
			d := t - i - 1
			if d < 0 || d > 255 {
				return nil, fmt.Errorf("sandbox: BPF jump from %d to %s (%d) out of range", i, j.l, t)
			}
			*j.dst = uint8(d)
		}
		out[i] = f
	}
	if len(out) > unix.BPF_MAXINSNS {
		return nil, fmt.Errorf("sandbox: BPF program of %d instructions is longer than the kernel takes (%d)", len(out), unix.BPF_MAXINSNS)
	}
	return out, nil
}
