package config

import (
	"fmt"

	"github.com/viovmm/vio/arch/x86/smbios"
)

// ParsePlatform parses --platform, the machine's identity as the guest's
// SMBIOS tables show it: serial_number=S,uuid=U,manufacturer=M,
// product_name=P,version=V,family=F,sku_number=K,asset_tag=T (Cloud
// Hypervisor's --platform keys where it has them). OEM strings, which may
// hold commas, go in the JSON config.
func ParsePlatform(spec string) (*Platform, error) {
	kv, err := splitSpec("platform", spec)
	if err != nil {
		return nil, err
	}
	p := &Platform{}
	for k, v := range inOrder(spec, kv) {
		switch k {
		case "serial_number":
			p.SystemSerialNumber = v
		case "uuid":
			p.SystemUUID = v
		case "manufacturer":
			p.SystemManufacturer = v
		case "product_name":
			p.SystemProductName = v
		case "version":
			p.SystemVersion = v
		case "family":
			p.SystemFamily = v
		case "sku_number":
			p.SystemSKUNumber = v
		case "asset_tag":
			p.ChassisAssetTag = v
		default:
			return nil, fmt.Errorf("--platform %q: unknown key %q (want serial_number, uuid, manufacturer, product_name, version, family, sku_number, asset_tag)", spec, k)
		}
	}
	return p, p.validateSMBIOS()
}

// Serial is the system serial number, in either of its spellings.
func (p *Platform) Serial() string {
	if p == nil {
		return ""
	}
	if p.SystemSerialNumber != "" {
		return p.SystemSerialNumber
	}
	return p.SerialNumber
}

// UUIDString is the system UUID, in either of its spellings ("" when the
// VMM is to choose one).
func (p *Platform) UUIDString() string {
	if p == nil {
		return ""
	}
	if p.SystemUUID != "" {
		return p.SystemUUID
	}
	return p.UUID
}

// SMBIOS returns what the guest's SMBIOS tables say about the machine,
// less what only the VMM knows (CPUs, memory). The UUID must have been
// set (see UUIDString) or it is all zeros.
func (p *Platform) SMBIOS() smbios.Info {
	if p == nil {
		return smbios.Info{}
	}
	info := smbios.Info{
		Manufacturer: p.SystemManufacturer, Product: p.SystemProductName, Version: p.SystemVersion,
		Serial: p.Serial(), SKU: p.SystemSKUNumber, Family: p.SystemFamily, AssetTag: p.ChassisAssetTag,
		OEMStrings: p.OEMStrings,
	}
	if u := p.UUIDString(); u != "" {
		info.UUID, _ = smbios.ParseUUID(u) // validated before
	}
	return info
}

// validateSMBIOS refuses identity strings the SMBIOS tables cannot carry.
func (p *Platform) validateSMBIOS() error {
	if p == nil {
		return nil
	}
	if p.SystemSerialNumber != "" && p.SerialNumber != "" && p.SystemSerialNumber != p.SerialNumber {
		return fmt.Errorf("platform: system_serial_number %q and serial_number %q disagree; give one", p.SystemSerialNumber, p.SerialNumber)
	}
	if p.SystemUUID != "" && p.UUID != "" && p.SystemUUID != p.UUID {
		return fmt.Errorf("platform: system_uuid %q and uuid %q disagree; give one", p.SystemUUID, p.UUID)
	}
	if u := p.UUIDString(); u != "" {
		if _, err := smbios.ParseUUID(u); err != nil {
			return fmt.Errorf("platform: %w", err)
		}
	}
	info := p.SMBIOS()
	info.NumCPUs = 1
	if _, err := smbios.Table(info, 0); err != nil {
		return fmt.Errorf("platform: %w", err)
	}
	return nil
}
