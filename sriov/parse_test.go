package sriov

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

func removeAll(p string) error { return os.RemoveAll(p) }

func TestParseCount(t *testing.T) {
	for in, want := range map[string]int{"0\n": 0, "2\n": 2, "65535": 65535, " 7 \n": 7} {
		if n, err := parseCount([]byte(in)); err != nil || n != want {
			t.Errorf("%q: %d %v", in, n, err)
		}
	}
	for _, in := range []string{"", "-1", "65536", "0x10", "+2", "02", "2 3", "abc"} {
		if _, err := parseCount([]byte(in)); err == nil {
			t.Errorf("%q parsed", in)
		}
	}
	if i, ok := virtfnIndex("virtfn12"); !ok || i != 12 {
		t.Errorf("virtfn12: %d %v", i, ok)
	}
	for _, in := range []string{"virtfn", "virtfn-1", "virtfn01", "virtfnx", "virtfn99999", "physfn"} {
		if _, ok := virtfnIndex(in); ok {
			t.Errorf("%q taken as a virtfn link", in)
		}
	}
	if s, ok := parseHexID([]byte("0x1B36\n")); !ok || s != "0x1b36" {
		t.Errorf("vendor: %q %v", s, ok)
	}
	for _, in := range []string{"", "0x", "1b36", "0xzz", "0x123456789"} {
		if _, ok := parseHexID([]byte(in)); ok {
			t.Errorf("%q taken as an id", in)
		}
	}
}

func FuzzParseCount(f *testing.F) {
	for _, s := range []string{"0\n", "2", "65535", "-1", "0x10", " 7 \n", "99999999999999999999"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := parseCount(b)
		if err != nil {
			return
		}
		if n < 0 || n > 0xffff || strconv.Itoa(n) != strings.TrimSpace(string(b)) {
			t.Errorf("%q -> %d", b, n)
		}
	})
}

func FuzzVirtfnIndex(f *testing.F) {
	for _, s := range []string{"virtfn0", "virtfn12", "virtfn", "virtfn-1", "virtfn01", "physfn"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, ok := virtfnIndex(s)
		if ok && (n < 0 || n > 0xffff || "virtfn"+strconv.Itoa(n) != s) {
			t.Errorf("%q -> %d", s, n)
		}
	})
}

func FuzzParseBDF(f *testing.F) {
	for _, s := range []string{"0000:01:00.0", "01:00.1", "0000:01:00", "../../etc", "0000:01:00.8", "FFFF:FF:1F.7"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseBDF(s)
		if err != nil {
			return
		}
		// Whatever passes is a sysfs name: no path separators, no dots
		// but the function's.
		if !bdfRE.MatchString(b) || strings.ContainsAny(b, "/ ") || len(b) != 12 {
			t.Errorf("%q -> %q", s, b)
		}
	})
}

func FuzzParseHexID(f *testing.F) {
	for _, s := range []string{"0x1b36\n", "0x010802", "0x", "1b36", "0x123456789"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, ok := parseHexID(b)
		if ok && (!strings.HasPrefix(s, "0x") || len(s) > 10 || len(s) < 3) {
			t.Errorf("%q -> %q", b, s)
		}
	})
}
