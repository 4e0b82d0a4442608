package vtd

import (
	"encoding/binary"

	"github.com/viovmm/vio/arch/x86/acpi"
)

// DMAR table layout (VT-d specification, chapter 8).
const (
	SigDMAR      = "DMAR"
	dmarRevision = 1

	drhdType        = 0
	drhdLength      = 16
	drhdIncludeAll  = 1 << 0 // INCLUDE_PCI_ALL
	dmarFlagsNoIR   = 0      // no interrupt remapping, no x2APIC opt-out
	dmarBodyReserve = 10
)

// DMARTable returns the ACPI DMAR table for one unit whose registers are
// at regBase (4 KiB aligned): the host address width, then one DMA
// remapping hardware unit definition with INCLUDE_PCI_ALL for PCI segment
// 0, so that every PCI device of the machine sits behind the unit and
// needs no device scope. The caller lists the table in the XSDT.
func DMARTable(regBase uint64) []byte {
	body := make([]byte, 0, 12+drhdLength)
	body = append(body, HostAddressWidth-1, dmarFlagsNoIR)
	body = append(body, make([]byte, dmarBodyReserve)...)
	drhd := make([]byte, drhdLength)
	binary.LittleEndian.PutUint16(drhd[0:], drhdType)
	binary.LittleEndian.PutUint16(drhd[2:], drhdLength)
	drhd[4] = drhdIncludeAll
	drhd[5] = 0                                // size: 2^0 pages of registers (RegisterSize)
	binary.LittleEndian.PutUint16(drhd[6:], 0) // segment 0
	binary.LittleEndian.PutUint64(drhd[8:], regBase)
	return acpi.Table(SigDMAR, dmarRevision, append(body, drhd...))
}
