package acpi_test

import (
	"testing"

	"github.com/viovmm/vio/lab/labtest"
)

// The tiny-guest tests need a /dev/kvm; where this host has none they run
// in the lab rather than vanish.
func TestMain(m *testing.M) { labtest.MainKVM(m) }
