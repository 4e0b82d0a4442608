package config

import (
	"errors"
	"fmt"
)

// CloudInit is a cloud-init NoCloud seed: vio builds a small read-only
// ISO 9660 disk labelled "cidata" holding these files and attaches it as
// the last virtio disk (see docs/distro.md). Each field is the path of a
// host file; a missing meta-data is generated (instance-id from the
// VM's SMBIOS UUID, local-hostname). (vio extension)
type CloudInit struct {
	UserData      string `json:"user_data,omitempty"`
	MetaData      string `json:"meta_data,omitempty"`
	NetworkConfig string `json:"network_config,omitempty"`
	VendorData    string `json:"vendor_data,omitempty"`
}

// ParseCloudInit parses --cloud-init user-data=F,meta-data=F,
// network-config=F,vendor-data=F (underscores are accepted too).
func ParseCloudInit(spec string) (*CloudInit, error) {
	kv, err := splitSpec("cloud-init", spec)
	if err != nil {
		return nil, err
	}
	c := &CloudInit{}
	for k, v := range inOrder(spec, kv) {
		switch k {
		case "user-data", "user_data":
			c.UserData = v
		case "meta-data", "meta_data":
			c.MetaData = v
		case "network-config", "network_config":
			c.NetworkConfig = v
		case "vendor-data", "vendor_data":
			c.VendorData = v
		default:
			return nil, fmt.Errorf("--cloud-init %q: unknown key %q (want user-data, meta-data, network-config, vendor-data)", spec, k)
		}
	}
	return c, c.validate()
}

// validate checks that the seed's files can be read.
func (c *CloudInit) validate() error {
	if c == nil {
		return nil
	}
	if c.UserData == "" && c.MetaData == "" && c.NetworkConfig == "" && c.VendorData == "" {
		return errors.New("cloud-init seed names no file: give at least user-data=FILE (and meta-data=FILE, network-config=FILE as needed)")
	}
	for _, f := range []struct{ path, what string }{
		{c.UserData, "cloud-init user-data"}, {c.MetaData, "cloud-init meta-data"},
		{c.NetworkConfig, "cloud-init network-config"}, {c.VendorData, "cloud-init vendor-data"},
	} {
		if f.path == "" {
			continue
		}
		if err := readable(f.path, f.what); err != nil {
			return err
		}
	}
	return nil
}
