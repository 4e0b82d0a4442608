package kvm

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestIsPVM(t *testing.T) {
	dir := t.TempDir()
	mod := filepath.Join(dir, "kvm_pvm")
	if err := os.Mkdir(mod, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	plain := write("plain", "processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor lm\n\nprocessor\t: 1\nflags\t\t: fpu lm\n")
	vmx := write("vmx", "processor\t: 0\nflags\t\t: fpu vmx lm\n")
	svm := write("svm", "processor\t: 0\nflags\t\t: fpu svm lm\n")
	// "svm" as part of another flag (e.g. "svm_lock") must not count.
	lookalike := write("lookalike", "flags\t\t: fpu svm_lock vmxx lm\nvmx flags\t: ept\n")
	for _, c := range []struct {
		name, module, cpuinfo string
		want                  bool
	}{
		{"pvm, no hardware virt", mod, plain, true},
		{"pvm module but vmx", mod, vmx, false},
		{"pvm module but svm", mod, svm, false},
		{"lookalike flags", mod, lookalike, true},
		{"no pvm module", filepath.Join(dir, "absent"), plain, false},
		{"unreadable cpuinfo", mod, filepath.Join(dir, "absent"), false},
	} {
		if got := isPVM(c.module, c.cpuinfo); got != c.want {
			t.Errorf("%s: isPVM = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestOpenMissing(t *testing.T) {
	_, err := Open(filepath.Join(t.TempDir(), "kvm"))
	if !errors.Is(err, ErrNoKVM) {
		t.Fatalf("Open of a missing node: %v, want ErrNoKVM", err)
	}
}

func TestOpenNotKVM(t *testing.T) {
	// A file that is not KVM answers KVM_GET_API_VERSION with ENOTTY.
	_, err := Open("/dev/null")
	if err == nil || errors.Is(err, ErrNoKVM) {
		t.Fatalf("Open(/dev/null): %v, want an ioctl error", err)
	}
}
