package vmm

import (
	"strings"
	"time"

	"github.com/viovmm/vio/block/memdisk"
	"github.com/viovmm/vio/cloudinit"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/virtio/blk"
)

// addCloudInitSeed attaches the config's cloud-init NoCloud seed as a
// read-only virtio disk after the configured ones (see docs/distro.md).
// It is built in memory from the user's files at every boot; its default
// meta-data names the VM's SMBIOS UUID as instance-id, so that UUID is
// chosen (and pinned into the config, as writeSMBIOS would) here.
func (v *VM) addCloudInitSeed() error {
	ci := v.cfg.CloudInit
	if ci == nil {
		return nil
	}
	if v.cfg.Platform == nil {
		v.cfg.Platform = &config.Platform{}
	}
	if v.cfg.Platform.UUIDString() == "" {
		v.cfg.Platform.SystemUUID = randomUUID()
	}
	uuid := strings.ToLower(v.cfg.Platform.UUIDString())
	img, err := cloudinit.Seed(ci, uuid, "vio-"+uuid[:min(8, len(uuid))], time.Now())
	if err != nil {
		return err
	}
	be := memdisk.New(img)
	v.closers = append(v.closers, be)
	dev, err := blk.New(be, blk.Config{Serial: cloudinit.Label, ReadOnly: true, NumQueues: 1})
	if err != nil {
		return err
	}
	return v.addVirtio("cidata", dev)
}
