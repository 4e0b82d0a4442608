package image

import (
	"strings"
	"testing"
)

// A LUKS image is refused with the way to open it, not with advice to
// convert it.
func TestProbeLUKSSaysHowToOpen(t *testing.T) {
	_, err := probeBytes([]byte("LUKS\xba\xbe\x00\x02"))
	if err == nil || !strings.Contains(err.Error(), "encrypt=on") {
		t.Fatalf("probe of a LUKS2 header: %v; want the encrypt=on advice", err)
	}
}
