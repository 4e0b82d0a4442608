package pci

// Host bridge identity: Intel's 0d57 ("Xeon E3/Core processor DRAM
// controller"-class host bridge), the ID Cloud Hypervisor also presents.
// Linux has no quirks keyed on it, unlike the i440FX (8086:1237), whose
// quirks assume a PIIX south bridge we do not emulate.
const (
	HostBridgeVendor = 0x8086
	HostBridgeDevice = 0x0d57
	ClassHostBridge  = 0x060000
)

// HostBridge is the function at 00:00.0. It has no BARs and no
// capabilities; it exists because guests expect bus 0 to start with one.
type HostBridge struct {
	*Config
}

// NewHostBridge returns the host bridge function.
func NewHostBridge() *HostBridge {
	return &HostBridge{NewConfig(Header{
		VendorID: HostBridgeVendor,
		DeviceID: HostBridgeDevice,
		Class:    ClassHostBridge,
	})}
}

// BARMapped implements Function; the host bridge has no BARs.
func (*HostBridge) BARMapped(Region, bool) {}

var _ Function = (*HostBridge)(nil)
