package filter

import (
	"bytes"
	"testing"
)

// Sub picks exactly the bytes asked for, across buffer boundaries, without
// copying.
func TestSub(t *testing.T) {
	bufs := [][]byte{[]byte("abc"), {}, []byte("defgh"), []byte("ij")}
	flat := bytes.Join(bufs, nil)
	for skip := int64(0); skip <= int64(len(flat)); skip++ {
		for n := int64(0); skip+n <= int64(len(flat)); n++ {
			got := Sub(bufs, skip, n)
			if j := bytes.Join(got, nil); !bytes.Equal(j, flat[skip:skip+n]) || Len(got) != n {
				t.Fatalf("Sub(%d, %d) = %q", skip, n, got)
			}
		}
	}
	s := Sub(bufs, 4, 2)
	s[0][0] = 'X'
	if bufs[2][1] != 'X' {
		t.Fatal("Sub copied")
	}
}
