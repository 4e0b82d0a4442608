package demo

import (
	"strings"
	"testing"
)

// A console as the guest prints it, kernel noise and carriage returns
// included.
const goodConsole = "[    1.0] virtio_blk virtio0: [vda] 131072 512-byte logical blocks\r\n" +
	"DEMO-DISK file=/demo.bin sha256=abc123\r\n" +
	"DEMO-RNG bytes=16\r\n" +
	"DEMO-NET replies=3\r\n" +
	"DEMO-IRQ virtio=634\r\n" +
	"DEMO-DONE\r\n"

func TestParseEvidence(t *testing.T) {
	ev := parseEvidence(goodConsole)
	if ev.failed != nil || !ev.done || ev.diskSHA256 != "abc123" || ev.pingReplies != 3 {
		t.Errorf("evidence %+v", ev)
	}
}

func TestParseEvidenceFailure(t *testing.T) {
	ev := parseEvidence("=== virtio-blk\r\nDEMO-FAIL disk: cannot mount the new filesystem on /dev/vda: No such device\r\n[ 2.0] reboot: Power down\r\n")
	if ev.failed == nil || ev.failed.Step != "disk" || !strings.Contains(ev.failed.Why, "No such device") {
		t.Fatalf("failure not parsed: %+v", ev.failed)
	}
	if ev.done {
		t.Error("a failed run counted as done")
	}
	// The first failure is the one reported.
	ev = parseEvidence("DEMO-FAIL net: no eth0\nDEMO-FAIL irq: none\n")
	if ev.failed.Step != "net" {
		t.Errorf("reported %q, want the first failure", ev.failed.Step)
	}
}

// TestVerifyRefusesMissingEvidence: the host side does not confirm what
// the guest never reported.
func TestVerifyRefusesMissingEvidence(t *testing.T) {
	var out strings.Builder
	err := verify(&Prepared{Disk: "/nonexistent"}, evidence{done: true}, &out)
	if err == nil || !strings.Contains(err.Error(), "disk") {
		t.Errorf("verify with no disk evidence: %v", err)
	}
}
