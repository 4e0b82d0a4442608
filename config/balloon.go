package config

import (
	"fmt"
)

// Balloon is a virtio-balloon device, in Cloud Hypervisor's BalloonConfig
// shape: Size is the memory (bytes) the guest is asked to give up from
// boot on; vm.resize's desired_balloon changes it at run time.
type Balloon struct {
	Size int64 `json:"size"`
	// DeflateOnOOM lets the guest take pages back from the balloon when it
	// runs out of memory, rather than killing processes.
	DeflateOnOOM bool `json:"deflate_on_oom,omitempty"`
	// FreePageReporting lets the guest report free memory, which the host
	// then releases, without a balloon target.
	FreePageReporting bool   `json:"free_page_reporting,omitempty"`
	ID                string `json:"id,omitempty"`
	PCISegment        int    `json:"pci_segment,omitempty"`
	IOMMU             bool   `json:"iommu,omitempty"`
}

// ParseBalloon parses the --balloon flag as Cloud Hypervisor spells it:
// size=SIZE[,deflate_on_oom=on][,free_page_reporting=on][,id=ID].
func ParseBalloon(spec string) (*Balloon, error) {
	kv, err := splitSpec("balloon", spec)
	if err != nil {
		return nil, err
	}
	b := &Balloon{}
	for k, v := range inOrder(spec, kv) {
		switch k {
		case "size":
			if b.Size, err = ParseSize(v); err != nil {
				return nil, fmt.Errorf("--balloon: %w", err)
			}
		case "deflate_on_oom":
			if b.DeflateOnOOM, err = parseBool("balloon", k, v); err != nil {
				return nil, err
			}
		case "free_page_reporting":
			if b.FreePageReporting, err = parseBool("balloon", k, v); err != nil {
				return nil, err
			}
		case "id":
			b.ID = v
		default:
			return nil, fmt.Errorf("--balloon %q: unknown key %q (want size, deflate_on_oom, free_page_reporting, id)", spec, k)
		}
	}
	if _, ok := kv["size"]; !ok {
		return nil, fmt.Errorf("--balloon %q: size= is missing; write it like size=0,free_page_reporting=on", spec)
	}
	return b, nil
}

// CheckBalloonSize checks a balloon size (at boot or from vm.resize)
// against guest RAM of memSize bytes.
func CheckBalloonSize(size, memSize int64) error {
	switch {
	case size < 0:
		return fmt.Errorf("balloon size %d is negative: give the bytes the guest should give up, 0 for none", size)
	case size > memSize:
		return fmt.Errorf("balloon size %s is more than the guest's %s of RAM", FormatSize(size), FormatSize(memSize))
	}
	return nil
}

func (c *VM) validateBalloon() error {
	b := c.Balloon
	if b == nil {
		return nil
	}
	if err := CheckBalloonSize(b.Size, c.Memory.Size); err != nil {
		return err
	}
	if b.PCISegment != 0 {
		return fmt.Errorf("balloon: pci_segment %d: vio has only segment 0", b.PCISegment)
	}
	return nil
}
