package filter

// Sub returns the bytes [skip, skip+n) of the concatenation of bufs as a
// list of sub-slices of bufs (no copy), for interposers that split one
// vectored request into pieces for different children. It stops early
// when bufs hold fewer bytes.
func Sub(bufs [][]byte, skip, n int64) [][]byte {
	var out [][]byte
	for _, b := range bufs {
		if n <= 0 {
			break
		}
		l := int64(len(b))
		if skip >= l {
			skip -= l
			continue
		}
		b = b[skip:]
		skip = 0
		if int64(len(b)) > n {
			b = b[:n]
		}
		out = append(out, b)
		n -= int64(len(b))
	}
	return out
}

// Len returns the total length of bufs.
func Len(bufs [][]byte) int64 {
	var t int64
	for _, b := range bufs {
		t += int64(len(b))
	}
	return t
}
