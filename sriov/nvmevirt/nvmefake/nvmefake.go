// Package nvmefake is a model of an SR-IOV NVMe primary controller for
// tests, following the rules QEMU's emulation (hw/nvme) applies to the
// Virtualization Management command: the primary starts holding the whole
// flexible pool and gives it up only at a function reset after a Primary
// Flexible allocation; a secondary takes resources only while offline,
// going offline gives them back, and it goes online only with at least 2
// VQ and 1 VI and its VF enabled; any reset of the primary takes every
// secondary offline.
package nvmefake

import (
	"fmt"

	"github.com/viovmm/vio/sriov/nvmevirt"
)

// Controller is the model. Its fields are its state; tests read them.
type Controller struct {
	Caps        nvmevirt.PrimaryCaps
	Secondaries []nvmevirt.Secondary
	// VFsEnabled says how many VFs the PF has enabled now (the model asks
	// sysfs's model).
	VFsEnabled func() int
	// Log records each command as it ran: "offline 1", "assign 1 VQ 2",
	// "online 1", "primary VQ 0", "identify 0x14", "reset".
	Log  []string
	Fail map[string]uint16 // a command's log text -> the status to fail it with
	next [2]uint16         // the primary's allocation from its next reset (VQ, VI)
}

// New is a controller like the lab's: vfs secondaries, 2 VQ and 1 VI
// of flexible resources per VF, all of them on the primary at first.
func New(vfs int) *Controller {
	c := &Controller{Caps: nvmevirt.PrimaryCaps{CNTLID: 0, CRT: 3,
		VQFRT: uint32(2 * vfs), VQRFAP: uint16(2 * vfs), VQPRT: 3, VQFRSM: 2, VQGRAN: 1,
		VIFRT: uint32(vfs), VIRFAP: uint16(vfs), VIPRT: 2, VIFRSM: 1, VIGRAN: 1}}
	c.next = [2]uint16{c.Caps.VQRFAP, c.Caps.VIRFAP}
	for i := 1; i <= vfs; i++ {
		c.Secondaries = append(c.Secondaries, nvmevirt.Secondary{SCID: uint16(i), PCID: 0, VFN: uint16(i)})
	}
	return c
}

const (
	invalidCtrlID   = 0x411f
	invalidState    = 0x4120
	invalidNumRes   = 0x4121
	invalidResource = 0x4122
	invalidField    = 0x4002
)

// Submit implements nvmevirt.Admin.
func (c *Controller) Submit(cmd *nvmevirt.Command) error {
	var text string
	status := c.run(cmd, &text)
	if s, ok := c.Fail[text]; ok {
		status = s
	}
	c.Log = append(c.Log, text)
	if status != 0 {
		c.Log[len(c.Log)-1] += fmt.Sprintf(" -> %#x", status)
		return &nvmevirt.StatusError{Op: text, Status: status}
	}
	return nil
}

func (c *Controller) run(cmd *nvmevirt.Command, text *string) uint16 {
	switch cmd.Opcode {
	case nvmevirt.OpIdentify:
		cns := cmd.CDW10 & 0xff
		*text = fmt.Sprintf("identify %#x", cns)
		switch cns {
		case nvmevirt.CNSPrimaryCaps:
			copy(cmd.Data, nvmevirt.EncodePrimaryCaps(c.Caps))
		case nvmevirt.CNSSecondaryList:
			copy(cmd.Data, nvmevirt.EncodeSecondaryList(c.Secondaries))
		default:
			return invalidField
		}
		return 0
	case nvmevirt.OpVirtMgmt:
		act, rt, id, nr := nvmevirt.DecodeVirtMgmt(cmd)
		if rt > nvmevirt.VI {
			*text = "virt-mgmt bad rt"
			return invalidResource
		}
		switch act {
		case nvmevirt.ActPrimaryFlexible:
			*text = fmt.Sprintf("primary %s %d", rt, nr)
			if id != c.Caps.CNTLID {
				return invalidCtrlID
			}
			total, sec := c.pool(rt)
			if int(nr) > total-sec {
				return invalidResource
			}
			c.next[rt] = nr
			return 0
		case nvmevirt.ActOffline:
			*text = fmt.Sprintf("offline %d", id)
			s := c.sec(id)
			if s == nil {
				return invalidCtrlID
			}
			c.setRes(s, nvmevirt.VQ, 0)
			c.setRes(s, nvmevirt.VI, 0)
			s.Online = false
			return 0
		case nvmevirt.ActAssign:
			*text = fmt.Sprintf("assign %d %s %d", id, rt, nr)
			s := c.sec(id)
			if s == nil {
				return invalidCtrlID
			}
			if s.Online {
				return invalidState
			}
			limit := c.Caps.VQFRSM
			have := s.NVQ
			if rt == nvmevirt.VI {
				limit, have = c.Caps.VIFRSM, s.NVI
			}
			if nr > limit {
				return invalidNumRes
			}
			if int(nr)-int(have) > c.Caps.Free(rt) {
				return invalidResource
			}
			c.setRes(s, rt, nr)
			return 0
		case nvmevirt.ActOnline:
			*text = fmt.Sprintf("online %d", id)
			s := c.sec(id)
			if s == nil {
				return invalidCtrlID
			}
			enabled := 0
			if c.VFsEnabled != nil {
				enabled = c.VFsEnabled()
			}
			if s.NVI == 0 || s.NVQ < 2 || int(s.VFN) > enabled {
				return invalidState
			}
			s.Online = true
			return 0
		}
		*text = fmt.Sprintf("virt-mgmt action %d", act)
		return invalidField
	}
	*text = fmt.Sprintf("opcode %#x", cmd.Opcode)
	return 0x4001
}

// FunctionReset is a reset of the PF (an FLR): every secondary goes
// offline and the primary takes its next allocation.
func (c *Controller) FunctionReset() {
	c.Log = append(c.Log, "reset")
	for i := range c.Secondaries {
		c.setRes(&c.Secondaries[i], nvmevirt.VQ, 0)
		c.setRes(&c.Secondaries[i], nvmevirt.VI, 0)
		c.Secondaries[i].Online = false
	}
	c.Caps.VQRFAP, c.Caps.VIRFAP = c.next[0], c.next[1]
}

// VFsDisabled is what the PF does when its VFs go away: their
// secondaries go offline.
func (c *Controller) VFsDisabled() {
	for i := range c.Secondaries {
		c.Secondaries[i].Online = false
	}
}

func (c *Controller) sec(id uint16) *nvmevirt.Secondary {
	for i := range c.Secondaries {
		if c.Secondaries[i].SCID == id {
			return &c.Secondaries[i]
		}
	}
	return nil
}

func (c *Controller) pool(rt nvmevirt.Resource) (total, assigned int) {
	if rt == nvmevirt.VI {
		return int(c.Caps.VIFRT), int(c.Caps.VIRFA)
	}
	return int(c.Caps.VQFRT), int(c.Caps.VQRFA)
}

func (c *Controller) setRes(s *nvmevirt.Secondary, rt nvmevirt.Resource, nr uint16) {
	if rt == nvmevirt.VI {
		c.Caps.VIRFA = uint32(int(c.Caps.VIRFA) + int(nr) - int(s.NVI))
		s.NVI = nr
		return
	}
	c.Caps.VQRFA = uint32(int(c.Caps.VQRFA) + int(nr) - int(s.NVQ))
	s.NVQ = nr
}
