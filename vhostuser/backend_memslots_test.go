package vhostuser

import (
	"bytes"
	"errors"
	"testing"

	"github.com/viovmm/vio/block/memdisk"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio/queuetest"
)

// TestBackendMemSlots drives CONFIGURE_MEM_SLOTS: regions added one by
// one (ADD_MEM_REG), one hot-plugged and removed again (REM_MEM_REG)
// under a running ring, which carries on; overlapping, unknown and
// excess regions are refused.
func TestBackendMemSlots(t *testing.T) {
	var ref refusals
	content := make([]byte, 1<<20)
	for i := range content {
		content[i] = byte(i / sector)
	}
	f, _ := serveOnPair(t, blkBackend(memdisk.New(content), blk.Config{}, &ref))
	if _, _, err := f.Negotiate(virtioFVersion1, ProtocolMQ|ProtocolReplyAck|ProtocolConfig); err != nil {
		t.Fatal(err)
	}
	// vio's Frontend does not negotiate CONFIGURE_MEM_SLOTS itself.
	offered, err := f.GetProtocolFeatures()
	if err != nil || offered&ProtocolConfigureMemSlots == 0 {
		t.Fatalf("protocol features %#x %v", offered, err)
	}
	if _, err := f.call(SetProtocolFeatures, U64(ProtocolMQ|ProtocolReplyAck|ProtocolConfig|ProtocolConfigureMemSlots), nil, false); err != nil {
		t.Fatal(err)
	}
	p, err := f.call(GetMaxMemSlots, nil, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := ParseU64(p); n != MaxMemSlots {
		t.Fatalf("GET_MAX_MEM_SLOTS %d", n)
	}
	mem, err := memory.NewWithOptions([]memory.Layout{{GPA: 0, Size: 2 << 20}, {GPA: 16 << 20, Size: 1 << 20}}, memory.Options{Backing: memory.Memfd})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	region := func(i int) (MemoryRegion, int) {
		r := &mem.Regions()[i]
		fd, off, _ := r.File()
		return MemoryRegion{GuestAddr: r.GPA, Size: r.Size(), UserAddr: uint64(r.HostAddr()), MmapOffset: off}, fd
	}
	add := func(r MemoryRegion, fd int) error {
		_, err := f.call(AddMemReg, r.Marshal(), []int{fd}, false)
		return err
	}
	rem := func(r MemoryRegion) error {
		_, err := f.call(RemMemReg, r.Marshal(), nil, false)
		return err
	}
	r0, fd := region(0)
	r1, _ := region(1)
	if err := add(r0, fd); err != nil {
		t.Fatal(err)
	}
	if err := add(r0, fd); !errors.Is(err, ErrFailed) || !ref.has(AddMemReg, ErrMalformed) {
		t.Fatalf("the same region twice: %v", err)
	}
	f.table = []MemoryRegion{r0, r1} // for SetVringAddrGPA: the front-end's view
	q := setupQueue(t, f, mem, 0, 0x1000, false)
	read := func(sec uint64) {
		t.Helper()
		u := q.do(t, [][]byte{blkHeader(blkTIn, sec)}, []uint32{sector, 1})
		if u.Data[sector] != blk.StatusOK || !bytes.Equal(u.Data[:sector], content[sec*sector:(sec+1)*sector]) {
			t.Fatalf("read of sector %d", sec)
		}
	}
	read(1)
	if err := add(r1, fd); err != nil { // hot-plug under the running ring
		t.Fatal(err)
	}
	// A request whose data buffer lies in the new region.
	hdr, st := uint64(0x100000), uint64(0x100100)
	if _, err := mem.WriteAt(blkHeader(blkTIn, 7), int64(hdr)); err != nil {
		t.Fatal(err)
	}
	for i := uint16(60); i < 63; i++ {
		if !q.drv.Reserve(i) {
			t.Fatalf("descriptor %d in use", i)
		}
	}
	q.drv.WriteDesc(60, descAt(hdr, 16, 1, 61))
	q.drv.WriteDesc(61, descAt(16<<20, sector, 1|2, 62))
	q.drv.WriteDesc(62, descAt(st, 1, 2, 0))
	q.drv.Publish(60)
	kick(t, q.kickFD)
	for q.drv.UsedIdx() != 2 {
		waitEvent(t, q.callFD)
	}
	got, _ := mem.Slice(16<<20, sector)
	status, _ := mem.Slice(st, 1)
	if status[0] != blk.StatusOK || !bytes.Equal(got, content[7*sector:8*sector]) {
		t.Fatalf("read into the hot-plugged region: status %d", status[0])
	}
	// The driver did not add that chain itself: step its used index past it.
	if u, ok, err := q.drv.GetUsed(); !ok || u.ID != 60 || err == nil {
		t.Fatalf("used entry of the hand-made chain: %+v %v %v", u, ok, err)
	}
	if err := rem(r1); err != nil {
		t.Fatal(err)
	}
	if err := rem(r1); !errors.Is(err, ErrFailed) || !ref.has(RemMemReg, ErrBadAddress) {
		t.Fatalf("removing a region twice: %v", err)
	}
	// Up to MaxMemSlots regions, then no more: page-sized views of the
	// same memfd at addresses of their own.
	for i := 1; ; i++ {
		r := MemoryRegion{GuestAddr: uint64(i) << 30, Size: 4096, UserAddr: uint64(i) << 40}
		err := add(r, fd)
		if i < MaxMemSlots && err != nil {
			t.Fatalf("region %d: %v", i+1, err)
		}
		if i == MaxMemSlots {
			if !errors.Is(err, ErrFailed) {
				t.Fatalf("region %d beyond the %d slots: %v", i+1, MaxMemSlots, err)
			}
			break
		}
	}
	// The ring ran through every change; the stream of requests still works.
	read(2)
}

func descAt(addr uint64, n uint32, flags, next uint16) queuetest.Desc {
	return queuetest.Desc{Addr: addr, Len: n, Flags: flags, Next: next}
}
