package vmm

import (
	"crypto/rand"
	"fmt"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/arch/x86/smbios"
	"github.com/viovmm/vio/config"
)

// writeSMBIOS puts the machine's identity where firmware would (see
// arch/x86/smbios). A VM with no UUID in its config gets a random one,
// pinned into the config like a probed disk format: the guest keeps its
// identity across reboots (systemd derives a machine id from it), and
// vm.info shows it.
func (v *VM) writeSMBIOS() error {
	if v.cfg.Platform == nil {
		v.cfg.Platform = &config.Platform{}
	}
	if v.cfg.Platform.UUIDString() == "" {
		v.cfg.Platform.SystemUUID = randomUUID()
	}
	info := v.cfg.Platform.SMBIOS()
	info.NumCPUs = v.cfg.CPUs.BootVCPUs
	info.MemBytes = uint64(v.cfg.Memory.Size)
	b, err := smbios.Table(info, x86.SMBIOSAddr)
	if err != nil {
		return err
	}
	if x86.SMBIOSAddr+uint64(len(b)) > x86.SMBIOSEnd {
		return fmt.Errorf("smbios: %d bytes of tables do not fit at %#x-%#x", len(b), x86.SMBIOSAddr, x86.SMBIOSEnd)
	}
	if _, err := v.mem.WriteAt(b, x86.SMBIOSAddr); err != nil {
		return fmt.Errorf("smbios: %w", err)
	}
	return nil
}

// randomUUID returns a version 4 UUID in its text form.
func randomUUID() string {
	var u [16]byte
	rand.Read(u[:]) // never fails (crypto/rand)
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
