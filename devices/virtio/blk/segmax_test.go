package blk_test

import (
	"bytes"
	"testing"

	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// TestSegMaxOnSmallerQueue: the driver sizes requests by seg_max, which
// the device derives from its maximum queue size, but may give the queue
// a smaller size (QEMU's vhost-user-blk-pci makes its rings 128 long
// under vio serve-disk's seg_max of 254). A request of seg_max buffers in
// an indirect table longer than the queue must be served, not completed
// with length 0 (a guest whose status byte still says OK from its last
// use would take that for success: seen in the lab, Linux's 1 MiB direct
// writes lost and reads returning zeros). One descriptor more is refused.
func TestSegMaxOnSmallerQueue(t *testing.T) {
	store := blocktest.NewMem(1 << 20)
	m := newMachine(t, store, blk.Config{QueueSize: 64})
	segMax := int(m.guest.ReadDeviceConfig(12, 4))
	if segMax != 62 {
		t.Fatalf("seg_max %d, want 62 for queues of 64", segMax)
	}
	g := m.guest
	if err := g.Negotiate(virtio.FeatureVersion1 | virtio.FeatureIndirectDesc | blk.FeatureSegMax); err != nil {
		t.Fatal(err)
	}
	g.ProgramMSIX(0, msiAddr, 0x30)
	g.ProgramMSIX(1, msiAddr, 0x31)
	g.EnableMSIX(true)
	g.SetConfigVector(0)
	d, err := g.SetupQueue(virtiopcitest.QueueConfig{Index: 0, Size: 16, Vector: 1, Base: queueBase, DataSize: dataSize})
	if err != nil {
		t.Fatal(err)
	}
	m.queues = append(m.queues[:0], d)
	g.SetStatus(virtio.StatusDriverOK)

	// A write of seg_max 512-byte buffers, each its own pattern.
	out := [][]byte{header(blk.TypeOut, 8)}
	var want []byte
	for i := range segMax {
		b := bytes.Repeat([]byte{byte(i + 1)}, 512)
		out = append(out, b)
		want = append(want, b...)
	}
	m.submit(t, 0, out, []uint32{1}, true)
	if u := m.collect(t, 0, 1)[0]; u.Len != 1 || u.Data[0] != blk.StatusOK {
		t.Fatalf("write of %d segments on a queue of 16: used %+v", segMax, u)
	}
	got := make([]byte, len(want))
	if _, err := store.ReadAt(got, 8*512); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("the write's data did not land")
	}
	// Read it back in seg_max buffers.
	in := make([]uint32, segMax+1)
	for i := range segMax {
		in[i] = 512
	}
	in[segMax] = 1
	m.submit(t, 0, [][]byte{header(blk.TypeIn, 8)}, in, true)
	u := m.collect(t, 0, 1)[0]
	if int(u.Len) != len(want)+1 || !bytes.Equal(u.Data[:len(want)], want) || u.Data[len(want)] != blk.StatusOK {
		t.Errorf("read of %d segments: used length %d, data equal %v", segMax, u.Len, bytes.Equal(u.Data[:min(len(want), len(u.Data))], want))
	}
	// A chain longer than the device allows is still refused.
	m.submit(t, 0, [][]byte{header(blk.TypeIn, 8)}, append(in[:segMax:segMax], 512, 1), true)
	if u := m.collect(t, 0, 1)[0]; u.Len != 0 {
		t.Errorf("a chain of seg_max+3 descriptors was served: used %+v", u)
	}
}
