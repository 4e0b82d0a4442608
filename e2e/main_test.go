// Package e2e holds vio's end-to-end tests: real Linux guests with stock
// drivers, booted by vio (and by QEMU as the baseline) on a real KVM. On a
// host without hardware virtualization they all run inside one lab boot.
package e2e

import (
	"testing"

	"github.com/viovmm/vio/lab/labtest"
)

func TestMain(m *testing.M) { labtest.Main(m) }
