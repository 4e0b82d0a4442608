// Package e2e holds vio's end-to-end tests: real Linux guests with stock
// drivers, booted by vio (and by QEMU as the baseline) on a real KVM. On a
// host without hardware virtualization they all run inside one lab boot.
package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// vioBin is the vio binary under test. TestMain builds it on the host (the
// lab's emulated CPU would take minutes to compile it) and hands its path
// to the lab run through VIO_BIN.
var vioBin = os.Getenv("VIO_BIN")

func TestMain(m *testing.M) {
	if vioBin == "" && !labtest.Inside() {
		dir, err := os.MkdirTemp("", "vio-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		vioBin = filepath.Join(dir, "vio")
		if err := labtest.Build(vioBin, "../cmd/vio"); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			os.Exit(1)
		}
		os.Setenv("VIO_BIN", vioBin)
		if err := buildGuestPrograms(dir); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			os.Exit(1)
		}
		if err := buildMigGuest(dir); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			os.Exit(1)
		}
		// Two labs at once: most of these guests have one vCPU, which
		// keeps one of the machine's two cores busy.
		code := labtest.RunSharded(m, 2, expected)
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(labtest.RunSharded(m, 2, expected))
}

// expected is each scenario's time in a full suite run on a 2-core
// machine (2026-12-06), for dealing the scenarios into two labs that end
// together. Only the proportions matter; a new test counts as the median.
var expected = labtest.Expected{
	"TestSwitchLab": 316 * time.Second, "TestDemo": 129 * time.Second,
	"TestJournal": 107 * time.Second, "TestCryptDmCrypt": 93 * time.Second,
	"TestMirrorRebuild": 90 * time.Second, "TestDistroDiskBoot": 90 * time.Second,
	"TestSandbox": 85 * time.Second, "TestVioBoot": 80 * time.Second,
	"TestBalloon": 78 * time.Second, "TestGracefulStop": 72 * time.Second,
	"TestEmulatedOnly": 98 * time.Second, "TestMirrorFailover": 58 * time.Second,
	"TestAPIKataPause": 55 * time.Second, "TestVsock": 50 * time.Second,
	"TestVirtioDevices": 49 * time.Second, "TestSnapshotRestore": 40 * time.Second,
	"TestUserNetwork": 35 * time.Second, "TestLiveMigration": 32 * time.Second,
	"TestDiskGraphFaults": 31 * time.Second,
	"TestDemoSabotaged":   29 * time.Second, "TestAPIHotplug": 28 * time.Second,
	"TestVioReboot": 27 * time.Second,
	// From the CI run of 2026-12-07 (a shard's log, not a full table).
	"TestLocalMigration": 76 * time.Second, "TestVhostUserMigration": 77 * time.Second,
	"TestIOMMU": 64 * time.Second, "TestMigrationDisk": 55 * time.Second,
	"TestMultipathLab": 50 * time.Second,
	// Estimated (three boots, two 25 s fio runs), not yet measured.
	"TestVhostUserFrontend": 110 * time.Second,
	// Four lab runs of it alone, 2026-12-07: 35-79 s.
	"TestTestpmd": 75 * time.Second,
	// Estimated (one QEMU boot, a 25 s fio run with a restart of serve-disk).
	"TestQEMUServeDisk": 70 * time.Second,
	// Two lab runs of it alone, 2026-12-07: 47 and 67 s.
	"TestNetMultiQueue": 70 * time.Second,
	// Lab runs of each alone, 2026-12-07, beside others' labs: 23-41 s
	// (3 runs); 43-147 s (4 passing runs, the slowest on a loaded host).
	"TestInterposeLab": 40 * time.Second, "TestBondLab": 90 * time.Second,
}
