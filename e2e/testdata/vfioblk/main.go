// Command vfioblk is the guest half of e2e's guest pass-through scenario:
// a virtio-blk driver in user space, as DPDK and SPDK drive devices. It
// opens a virtio-blk PCI function that the guest bound to vfio-pci,
// makes one buffer visible to the device through the (virtual) IOMMU,
// and runs the device's queue itself, polled:
//
//  1. reads sector HOSTSECTOR, where the host wrote a pattern;
//  2. writes a pattern of its own at WRITESECTOR and reads it back;
//  3. the hostile case: a read request whose data buffer is an address
//     the IOMMU does not map, chosen as the guest-physical address of a
//     page of this program (so a device that bypassed the IOMMU would
//     overwrite it); the device must not touch it, and it fails the
//     request (IOERR, or the chain given back unanswered) or stops with
//     DEVICE_NEEDS_RESET;
//  4. resets the device, starts it again and reads WRITESECTOR once more.
//
// It prints "VIO-VFIO key=value" lines for the test, and exits non-zero
// at the first step that fails.
//
// Usage: vfioblk BDF HOSTSECTOR WRITESECTOR
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/vfio"
)

// The buffer the device may reach, and where its parts are in it.
const (
	dmaIOVA   = 0x100000 // where the device sees it
	dmaSize   = 64 << 10
	hdrOff    = 4096 // virtio-blk request header, then the status byte
	statusOff = hdrOff + 16
	dataOff   = 8192
	dataLen   = 4096

	blkIn  = 0
	blkOut = 1
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: vfioblk BDF HOSTSECTOR WRITESECTOR")
		os.Exit(2)
	}
	hostSector, err1 := strconv.ParseUint(os.Args[2], 0, 64)
	writeSector, err2 := strconv.ParseUint(os.Args[3], 0, 64)
	if err := errors.Join(err1, err2); err != nil {
		fail("bad sector: %v", err)
	}
	c, err := vfio.OpenContainer()
	if err != nil {
		fail("%v", err)
	}
	g, err := vfio.OpenGroup(c, os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	d, err := g.Device(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	say("opened", os.Args[1]+" group "+g.ID())
	cmd, err := d.Read(vfio.RegionConfig, 0x04, 2)
	if err != nil {
		fail("%v", err)
	}
	if err := d.Write(vfio.RegionConfig, 0x04, 2, cmd|0x6); err != nil { // memory space, bus master
		fail("%v", err)
	}
	mem := pinned(dmaSize)
	if err := c.MapDMA(mem, dmaIOVA, vfio.DMARead|vfio.DMAWrite); err != nil {
		fail("%v", err)
	}
	say("mapped", fmt.Sprintf("%#x+%#x", dmaIOVA, dmaSize))
	v := &virtioDev{Device: d, ring: mem[:ringSize], ringIOVA: dmaIOVA}
	if err := v.findCaps(); err != nil {
		fail("%v", err)
	}
	if err := v.start(); err != nil {
		fail("starting the device: %v", err)
	}
	data := mem[dataOff : dataOff+dataLen]

	// 1. What the host wrote.
	if err := v.request(mem, blkIn, hostSector, dmaIOVA+dataOff); err != nil {
		fail("reading sector %d: %v", hostSector, err)
	}
	say("host-data", string(bytes.TrimRight(data[:32], "\x00")))
	say("host-sha", sum(data))

	// 2. A write of our own, read back.
	pattern := bytes.Repeat([]byte("VIO-VFIO-WRITE-"), dataLen/15+1)[:dataLen]
	copy(data, pattern)
	if err := v.request(mem, blkOut, writeSector, dmaIOVA+dataOff); err != nil {
		fail("writing sector %d: %v", writeSector, err)
	}
	say("wrote-sha", sum(pattern))
	clear(data)
	if err := v.request(mem, blkIn, writeSector, dmaIOVA+dataOff); err != nil {
		fail("reading sector %d back: %v", writeSector, err)
	}
	say("readback", verdict(bytes.Equal(data, pattern)))

	// 3. The hostile request: its data buffer is the physical address of
	// canary, which the IOMMU does not map for this device.
	canary := pinned(4096)
	for i := range canary {
		canary[i] = 0xa5
	}
	phys, err := physAddr(canary)
	if err != nil {
		fail("%v", err)
	}
	if phys >= dmaIOVA && phys < dmaIOVA+dmaSize {
		fail("the canary's address %#x falls in the mapped window; cannot run the hostile case", phys)
	}
	say("hostile-iova", fmt.Sprintf("%#x", phys))
	err = v.request(mem, blkIn, writeSector, phys)
	var broken *deviceBroken
	switch {
	case errors.As(err, &broken):
		say("hostile", "needs-reset")
	case errors.Is(err, errIOErr):
		say("hostile", "ioerr")
	case errors.Is(err, errNoStatus):
		say("hostile", "refused")
	case err != nil:
		fail("the hostile request: %v", err)
	default:
		say("hostile", "completed")
	}
	say("canary", verdict(bytes.Count(canary, []byte{0xa5}) == len(canary)))

	// 4. The device works again after a reset.
	if err := v.start(); err != nil {
		fail("restarting the device: %v", err)
	}
	clear(data)
	if err := v.request(mem, blkIn, writeSector, dmaIOVA+dataOff); err != nil {
		fail("reading sector %d after the reset: %v", writeSector, err)
	}
	say("after-reset", verdict(bytes.Equal(data, pattern)))
	if err := c.UnmapDMA(dmaIOVA, dmaSize); err != nil {
		fail("%v", err)
	}
	say("done", "ok")
}

var (
	errIOErr = errors.New("the device answered VIRTIO_BLK_S_IOERR")
	// errNoStatus is a request given back with its status byte untouched:
	// the device refused the chain (vio does that when a buffer cannot be
	// reached) without touching the disk.
	errNoStatus = errors.New("the device gave the request back without a status")
)

// request runs one virtio-blk request of typ at sector with its 4 KiB
// data buffer at the device address data; header and status sit in mem.
func (v *virtioDev) request(mem []byte, typ uint32, sector, data uint64) error {
	binary.LittleEndian.PutUint32(mem[hdrOff:], typ)
	binary.LittleEndian.PutUint32(mem[hdrOff+4:], 0)
	binary.LittleEndian.PutUint64(mem[hdrOff+8:], sector)
	mem[statusOff] = 0xff
	_, err := v.submit([]buf{
		{iova: dmaIOVA + hdrOff, n: 16},
		{iova: data, n: dataLen, write: typ == blkIn},
		{iova: dmaIOVA + statusOff, n: 1, write: true},
	})
	if err != nil {
		return err
	}
	switch mem[statusOff] {
	case 0:
		return nil
	case 1:
		return errIOErr
	case 0xff:
		return errNoStatus
	default:
		return fmt.Errorf("request status %d", mem[statusOff])
	}
}

// pinned returns n bytes of memory that stays where it is (locked).
func pinned(n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		fail("mmap: %v", err)
	}
	if err := unix.Mlock(b); err != nil {
		fail("mlock: %v", err)
	}
	return b
}

// physAddr is the guest-physical address of b's first byte, from
// /proc/self/pagemap (root sees the frame numbers).
func physAddr(b []byte) (uint64, error) {
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	va := uint64(uintptr(unsafe.Pointer(&b[0])))
	var e [8]byte
	if _, err := f.ReadAt(e[:], int64(va/4096*8)); err != nil {
		return 0, fmt.Errorf("pagemap: %w", err)
	}
	ent := binary.LittleEndian.Uint64(e[:])
	pfn := ent & (1<<55 - 1)
	if ent>>63 == 0 || pfn == 0 {
		return 0, fmt.Errorf("pagemap: page not present or frame hidden (%#x)", ent)
	}
	return pfn*4096 + va%4096, nil
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return fmt.Sprintf("%x", h[:8])
}

func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "mismatch"
}

func say(k, v string) { fmt.Printf("VIO-VFIO %s=%s\n", k, v) }

func fail(format string, a ...any) {
	say("error", fmt.Sprintf(format, a...))
	os.Exit(1)
}
