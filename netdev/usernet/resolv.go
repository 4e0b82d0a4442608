package usernet

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// maxResolvConf bounds what is read of a resolv.conf: real ones are a few
// hundred bytes.
const maxResolvConf = 64 << 10

// readResolvConf returns the first nameserver of a resolv.conf, port 53.
func readResolvConf(path string) (netip.AddrPort, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("usernet: DNS relay has no upstream: %w", err)
	}
	a, ok := parseResolvConf(b)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("usernet: DNS relay has no upstream: %s names no nameserver", path)
	}
	return a, nil
}

// parseResolvConf finds the first valid "nameserver ADDR" line (an IPv6
// address may carry a zone, as glibc allows).
func parseResolvConf(b []byte) (netip.AddrPort, bool) {
	if len(b) > maxResolvConf {
		b = b[:maxResolvConf]
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), maxResolvConf)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil || a.IsUnspecified() {
			continue
		}
		return netip.AddrPortFrom(a.Unmap(), 53), true
	}
	return netip.AddrPort{}, false
}
