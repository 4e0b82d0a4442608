package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/viovmm/vio/vfio"
)

// Virtio-pci (modern) pieces: the vendor capabilities that place the
// common configuration and the notification area in a BAR, the common
// configuration's fields, and the status and feature bits used here.
const (
	capVendor    = 0x09
	capCommonCfg = 1
	capNotifyCfg = 2

	cfgDeviceFeatureSelect = 0
	cfgDeviceFeature       = 4
	cfgDriverFeatureSelect = 8
	cfgDriverFeature       = 12
	cfgStatus              = 20
	cfgQueueSelect         = 22
	cfgQueueSize           = 24
	cfgQueueMSIXVector     = 26
	cfgQueueEnable         = 28
	cfgQueueNotifyOff      = 30
	cfgQueueDesc           = 32
	cfgQueueDriver         = 40
	cfgQueueDevice         = 48

	statusAck         = 1
	statusDriver      = 2
	statusDriverOK    = 4
	statusFeaturesOK  = 8
	statusNeedsReset  = 0x40
	statusFailed      = 0x80
	featVersion1      = 1 << 32
	featAccessPlatfrm = 1 << 33

	noVector = 0xffff

	descNext  = 1
	descWrite = 2
)

// where is a place in one of the device's BARs.
type where struct {
	bar int
	off int64
}

// virtioDev is a virtio-pci device driven from user space with one
// polled split virtqueue (queue 0) whose rings live in ring, a buffer
// the device sees at ringIOVA.
type virtioDev struct {
	*vfio.Device
	common, notify where
	notifyMul      uint32
	notifyAt       int64 // queue 0's doorbell in the notify BAR
	ring           []byte
	ringIOVA       uint64
	availIdx       uint16
	usedIdx        uint16
}

const qsize = 8

// Offsets of the split virtqueue's parts in ring, for qsize entries.
const (
	descOff  = 0
	availOff = descOff + 16*qsize
	usedOff  = 1024 // 4-byte aligned, well past the avail ring
	ringSize = 2048
)

// findCaps walks the PCI capability list for the virtio common and
// notification configurations.
// read and write access region r at off, n bytes wide (1, 2 or 4).
func (v *virtioDev) read(r int, off int64, n int) (uint32, error) {
	x, err := v.Read(r, off, n)
	return uint32(x), err
}

func (v *virtioDev) write(r int, off int64, n int, val uint32) error {
	return v.Write(r, off, n, uint64(val))
}

func (v *virtioDev) findCaps() error {
	status, err := v.read(vfio.RegionConfig, 0x06, 2)
	if err != nil {
		return err
	}
	if status&0x10 == 0 {
		return errors.New("the device has no capability list")
	}
	p, err := v.read(vfio.RegionConfig, 0x34, 1)
	if err != nil {
		return err
	}
	var found int
	for hops := 0; p != 0 && hops < 48; hops++ {
		off := int64(p &^ 3)
		id, _ := v.read(vfio.RegionConfig, off, 1)
		next, _ := v.read(vfio.RegionConfig, off+1, 1)
		if id == capVendor {
			typ, _ := v.read(vfio.RegionConfig, off+3, 1)
			bar, _ := v.read(vfio.RegionConfig, off+4, 1)
			at, _ := v.read(vfio.RegionConfig, off+8, 4)
			switch typ {
			case capCommonCfg:
				v.common, found = where{int(bar), int64(at)}, found|1
			case capNotifyCfg:
				v.notify, found = where{int(bar), int64(at)}, found|2
				if v.notifyMul, err = v.read(vfio.RegionConfig, off+16, 4); err != nil {
					return err
				}
			}
		}
		p = next
	}
	if found != 3 || v.common.bar > 5 || v.notify.bar > 5 {
		return fmt.Errorf("no virtio common and notify capabilities (found %#b)", found)
	}
	return nil
}

func (v *virtioDev) cfgRead(off int64, n int) (uint32, error) {
	return v.read(v.common.bar, v.common.off+off, n)
}

func (v *virtioDev) cfgWrite(off int64, n int, val uint32) error {
	return v.write(v.common.bar, v.common.off+off, n, val)
}

// cfgWrite64 writes a 64-bit field as two 32-bit halves, low first, as
// drivers do.
func (v *virtioDev) cfgWrite64(off int64, val uint64) error {
	if err := v.cfgWrite(off, 4, uint32(val)); err != nil {
		return err
	}
	return v.cfgWrite(off+4, 4, uint32(val>>32))
}

// status reads the device status byte.
func (v *virtioDev) status() (uint32, error) { return v.cfgRead(cfgStatus, 1) }

// start resets the device and brings it to DRIVER_OK with VERSION_1 and
// ACCESS_PLATFORM (its DMA goes through the IOMMU) and queue 0 on ring,
// polled: no MSI-X vector, no interrupts asked for.
func (v *virtioDev) start() error {
	if err := v.cfgWrite(cfgStatus, 1, 0); err != nil {
		return err
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		s, err := v.status()
		if err != nil {
			return err
		}
		if s == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the device did not reset (status %#x)", s)
		}
		runtime.Gosched()
	}
	status := uint32(statusAck | statusDriver)
	if err := v.cfgWrite(cfgStatus, 1, status); err != nil {
		return err
	}
	var feat uint64
	for sel := uint32(0); sel < 2; sel++ {
		if err := v.cfgWrite(cfgDeviceFeatureSelect, 4, sel); err != nil {
			return err
		}
		f, err := v.cfgRead(cfgDeviceFeature, 4)
		if err != nil {
			return err
		}
		feat |= uint64(f) << (32 * sel)
	}
	const want = featVersion1 | featAccessPlatfrm
	if feat&want != want {
		return fmt.Errorf("the device offers features %#x, without VERSION_1 and ACCESS_PLATFORM", feat)
	}
	for sel := uint32(0); sel < 2; sel++ {
		if err := v.cfgWrite(cfgDriverFeatureSelect, 4, sel); err != nil {
			return err
		}
		if err := v.cfgWrite(cfgDriverFeature, 4, uint32(uint64(want)>>(32*sel))); err != nil {
			return err
		}
	}
	status |= statusFeaturesOK
	if err := v.cfgWrite(cfgStatus, 1, status); err != nil {
		return err
	}
	if s, err := v.status(); err != nil || s&statusFeaturesOK == 0 {
		return fmt.Errorf("the device refused the features (status %#x, %v)", s, err)
	}
	if err := v.cfgWrite(cfgQueueSelect, 2, 0); err != nil {
		return err
	}
	max, err := v.cfgRead(cfgQueueSize, 2)
	if err != nil {
		return err
	}
	if max < qsize {
		return fmt.Errorf("queue 0 has %d entries, want at least %d", max, qsize)
	}
	noff, err := v.cfgRead(cfgQueueNotifyOff, 2)
	if err != nil {
		return err
	}
	v.notifyAt = v.notify.off + int64(noff)*int64(v.notifyMul)
	clear(v.ring)
	v.availIdx, v.usedIdx = 0, 0
	steps := []struct {
		off int64
		val uint64
		n   int
	}{
		{cfgQueueSize, qsize, 2},
		{cfgQueueMSIXVector, noVector, 2},
		{cfgQueueDesc, v.ringIOVA + descOff, 8},
		{cfgQueueDriver, v.ringIOVA + availOff, 8},
		{cfgQueueDevice, v.ringIOVA + usedOff, 8},
		{cfgQueueEnable, 1, 2},
	}
	for _, s := range steps {
		if s.n == 8 {
			err = v.cfgWrite64(s.off, s.val)
		} else {
			err = v.cfgWrite(s.off, s.n, uint32(s.val))
		}
		if err != nil {
			return err
		}
	}
	// No interrupts: this driver polls the used ring.
	binary.LittleEndian.PutUint16(v.ring[availOff:], 1) // VIRTQ_AVAIL_F_NO_INTERRUPT
	return v.cfgWrite(cfgStatus, 1, status|statusDriverOK)
}

// buf is one descriptor's buffer: where the device finds it and whether
// it writes it.
type buf struct {
	iova  uint64
	n     uint32
	write bool
}

// submit puts one chain of bufs on the queue, notifies the device and
// waits for it to be used; it returns the length the device reports. The
// device failing (NEEDS_RESET) or not answering ends the wait.
func (v *virtioDev) submit(chain []buf) (uint32, error) {
	for i, b := range chain {
		d := v.ring[descOff+16*i:]
		binary.LittleEndian.PutUint64(d[0:], b.iova)
		binary.LittleEndian.PutUint32(d[8:], b.n)
		var flags uint16
		if i+1 < len(chain) {
			flags |= descNext
		}
		if b.write {
			flags |= descWrite
		}
		binary.LittleEndian.PutUint16(d[12:], flags)
		binary.LittleEndian.PutUint16(d[14:], uint16(i+1))
	}
	slot := availOff + 4 + 2*int(v.availIdx%qsize)
	binary.LittleEndian.PutUint16(v.ring[slot:], 0) // the chain's head
	v.availIdx++
	// flags and idx as one 32-bit store, after the descriptors (x86
	// keeps stores in order; the atomic keeps the compiler from moving it).
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&v.ring[availOff])), 1|uint32(v.availIdx)<<16)
	if err := v.write(v.notify.bar, v.notifyAt, 2, 0); err != nil {
		return 0, err
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		used := uint16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&v.ring[usedOff]))) >> 16)
		if used != v.usedIdx {
			e := v.ring[usedOff+4+8*int(v.usedIdx%qsize):]
			v.usedIdx++
			return binary.LittleEndian.Uint32(e[4:]), nil
		}
		s, err := v.status()
		if err != nil {
			return 0, err
		}
		if s&(statusNeedsReset|statusFailed) != 0 {
			return 0, &deviceBroken{status: s}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("the device did not use the request in 10 s (status %#x)", s)
		}
		runtime.Gosched()
	}
}

// deviceBroken is the device refusing to go on: it set DEVICE_NEEDS_RESET.
type deviceBroken struct{ status uint32 }

func (e *deviceBroken) Error() string {
	return fmt.Sprintf("the device needs a reset (status %#x)", e.status)
}
