package vmm

import (
	"testing"

	"github.com/viovmm/vio/lab/labtest"
)

// The tests that boot real VMs (a synthetic guest that halts: migration's
// disk, TAP and vhost-user handoffs, snapshots) need a /dev/kvm; where
// this host has none they run in the lab rather than skip.
func TestMain(m *testing.M) { labtest.MainKVM(m) }
