package ids

import "testing"

// FuzzParseVerdict: any nine bytes decode to a verdict or ErrProtocol.
func FuzzParseVerdict(f *testing.F) {
	f.Add(AppendVerdict(nil, 7, true))
	f.Add(append(AppendVerdict(nil, 1, false)[:8], 9))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) != VerdictSize {
			return
		}
		id, drop, err := parseVerdict([VerdictSize]byte(b))
		if err == nil && string(AppendVerdict(nil, id, drop)) != string(b) {
			t.Fatalf("%x does not re-encode", b)
		}
	})
}
