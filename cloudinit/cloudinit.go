// Package cloudinit builds the seed disk of cloud-init's NoCloud data
// source: an ISO 9660 volume labelled "cidata" whose root holds user-data,
// meta-data and, when given, network-config and vendor-data. cloud-init in
// the guest finds it by its label on first boot and configures the
// instance from it (hostname, users, SSH keys, network).
package cloudinit

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/viovmm/vio/cloudinit/iso9660"
	"github.com/viovmm/vio/config"
)

// Label is the volume label NoCloud looks for.
const Label = "cidata"

// MaxFile bounds each file of the seed.
const MaxFile = 16 << 20

// Seed returns the seed image for c. Without a meta-data file it writes
// one naming instanceID (cloud-init re-runs its per-instance modules when
// that changes, so it must stay the same across boots of one VM: vio uses
// the VM's SMBIOS UUID) and hostname.
func Seed(c *config.CloudInit, instanceID, hostname string, t time.Time) ([]byte, error) {
	var files []iso9660.File
	for _, f := range []struct{ name, path string }{
		{"user-data", c.UserData}, {"meta-data", c.MetaData},
		{"network-config", c.NetworkConfig}, {"vendor-data", c.VendorData},
	} {
		var data []byte
		switch {
		case f.path != "":
			b, err := readFile(f.path)
			if err != nil {
				return nil, fmt.Errorf("cloud-init %s: %w", f.name, err)
			}
			data = b
		case f.name == "meta-data":
			data = DefaultMetaData(instanceID, hostname)
		case f.name == "user-data":
			data = []byte{} // NoCloud expects the file, even empty
		default:
			continue
		}
		files = append(files, iso9660.File{Name: f.name, Data: data})
	}
	return iso9660.Write(Label, files, t)
}

// DefaultMetaData is the meta-data written when the user gives none.
func DefaultMetaData(instanceID, hostname string) []byte {
	return []byte(fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\n", instanceID, hostname))
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFile {
		return nil, fmt.Errorf("%s is larger than %d MiB, more than a seed holds", path, MaxFile>>20)
	}
	return b, nil
}
