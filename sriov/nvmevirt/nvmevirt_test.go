package nvmevirt

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unsafe"
)

// TestPassthruLayout: the ioctl struct is the kernel's to the byte, and
// NVME_IOCTL_ADMIN_CMD is the number linux/nvme_ioctl.h gives.
func TestPassthruLayout(t *testing.T) {
	var p passthru
	if s := unsafe.Sizeof(p); s != 72 {
		t.Fatalf("struct nvme_passthru_cmd is 72 bytes, ours %d", s)
	}
	for _, f := range []struct {
		name string
		off  uintptr
		want uintptr
	}{
		{"nsid", unsafe.Offsetof(p.NSID), 4}, {"metadata", unsafe.Offsetof(p.Metadata), 16},
		{"addr", unsafe.Offsetof(p.Addr), 24}, {"data_len", unsafe.Offsetof(p.DataLen), 36},
		{"cdw10", unsafe.Offsetof(p.CDW10), 40}, {"cdw15", unsafe.Offsetof(p.CDW15), 60},
		{"timeout_ms", unsafe.Offsetof(p.TimeoutMS), 64}, {"result", unsafe.Offsetof(p.Result), 68},
	} {
		if f.off != f.want {
			t.Errorf("%s at offset %d, the kernel's is %d", f.name, f.off, f.want)
		}
	}
	if ioctlAdminCmd != 0xc0484e41 {
		t.Errorf("NVME_IOCTL_ADMIN_CMD %#x, want 0xc0484e41", ioctlAdminCmd)
	}
	c := IdentifyCmd(CNSSecondaryList, 3)
	raw := toPassthru(&c, 0x1000)
	if raw.Opcode != 6 || raw.CDW10 != 0x00030015 || raw.DataLen != 4096 || raw.Addr != 0x1000 {
		t.Errorf("identify laid out as %+v", raw)
	}
}

func TestVirtMgmtEncoding(t *testing.T) {
	for _, tc := range []struct {
		act    uint8
		rt     Resource
		id, nr uint16
		cdw10  uint32
		cdw11  uint32
	}{
		{ActAssign, VI, 2, 1, 0x00020108, 1},
		{ActAssign, VQ, 1, 2, 0x00010008, 2},
		{ActOnline, VQ, 0x1234, 0, 0x12340009, 0},
		{ActOffline, VQ, 7, 0, 0x00070007, 0},
		{ActPrimaryFlexible, VI, 0, 0, 0x00000101, 0},
	} {
		c := VirtMgmtCmd(tc.act, tc.rt, tc.id, tc.nr)
		if c.Opcode != 0x1c || c.CDW10 != tc.cdw10 || c.CDW11 != tc.cdw11 {
			t.Errorf("act %d rt %d id %d nr %d: cdw10 %#x cdw11 %#x, want %#x %#x", tc.act, tc.rt, tc.id, tc.nr, c.CDW10, c.CDW11, tc.cdw10, tc.cdw11)
		}
		act, rt, id, nr := DecodeVirtMgmt(&c)
		if act != tc.act || rt != tc.rt || id != tc.id || nr != tc.nr {
			t.Errorf("decoded %d %d %d %d", act, rt, id, nr)
		}
	}
}

// TestParsePrimaryCaps reads the lab's controller (QEMU's nvme with
// sriov_max_vfs=2, sriov_vq_flexible=4, sriov_vi_flexible=2,
// max_ioqpairs=6, msix_qsize=4) from bytes laid out by hand.
func TestParsePrimaryCaps(t *testing.T) {
	b := make([]byte, 4096)
	b[0], b[4] = 0, 3
	b[32] = 4  // vqfrt
	b[40] = 4  // vqrfap: QEMU starts with the whole pool on the primary
	b[42] = 3  // vqprt
	b[44] = 2  // vqfrsm
	b[46] = 1  // vqgran
	b[64] = 2  // vifrt
	b[72] = 2  // virfap
	b[74] = 2  // viprt
	b[76] = 1  // vifrsm
	b[78] = 1  // vigran
	b[68] = 0  // virfa
	b[36] = 0  // vqrfa
	b[1] = 0x1 // cntlid 0x100
	p, err := ParsePrimaryCaps(b)
	if err != nil {
		t.Fatal(err)
	}
	want := PrimaryCaps{CNTLID: 0x100, CRT: 3, VQFRT: 4, VQRFAP: 4, VQPRT: 3, VQFRSM: 2, VQGRAN: 1,
		VIFRT: 2, VIRFAP: 2, VIPRT: 2, VIFRSM: 1, VIGRAN: 1}
	if p != want {
		t.Errorf("got %+v\nwant %+v", p, want)
	}
	if p.Free(VQ) != 0 || p.Free(VI) != 0 || !p.Supports(VQ) || !p.Supports(VI) {
		t.Errorf("free %d %d", p.Free(VQ), p.Free(VI))
	}
	if !bytes.Equal(EncodePrimaryCaps(p)[:80], b[:80]) {
		t.Errorf("encode is not parse backwards")
	}
	if _, err := ParsePrimaryCaps(b[:79]); !errors.Is(err, ErrShort) {
		t.Errorf("79 bytes: %v", err)
	}
}

func TestParseSecondaryList(t *testing.T) {
	in := []Secondary{{SCID: 1, PCID: 0, Online: true, VFN: 1, NVQ: 2, NVI: 1}, {SCID: 2, VFN: 2}}
	b := EncodeSecondaryList(in)
	if b[0] != 2 || b[32] != 1 || b[36] != 1 || b[40] != 1 || b[42] != 2 || b[44] != 1 || b[64] != 2 || b[72] != 2 {
		t.Errorf("entries not at the spec's offsets: % x", b[:80])
	}
	out, err := ParseSecondaryList(b)
	if err != nil || len(out) != 2 || out[0] != in[0] || out[1] != in[1] {
		t.Fatalf("got %+v, %v", out, err)
	}
	if s, ok := ForVF(out, 2); !ok || s.SCID != 2 {
		t.Errorf("VF 2's secondary: %+v %v", s, ok)
	}
	if _, ok := ForVF(out, 3); ok {
		t.Errorf("VF 3 has no secondary")
	}
	if _, err := ParseSecondaryList(b[:32+32+31]); !errors.Is(err, ErrShort) {
		t.Errorf("a truncated second entry: %v", err)
	}
	b[0] = 128
	if _, err := ParseSecondaryList(b); err == nil || !strings.Contains(err.Error(), "128 entries") {
		t.Errorf("128 entries: %v", err)
	}
	if _, err := ParseSecondaryList(nil); !errors.Is(err, ErrShort) {
		t.Errorf("no data: %v", err)
	}
}

func TestStatusError(t *testing.T) {
	e := &StatusError{Op: "virt-mgmt: secondary 1 online", Status: 0x4120}
	if e.Code() != 0x120 || !strings.Contains(e.Error(), "invalid secondary controller state") {
		t.Errorf("%v (code %#x)", e, e.Code())
	}
	if s := (&StatusError{Op: "x", Status: 0x4abc}).Error(); !strings.Contains(s, "0x4abc") {
		t.Errorf("unknown status: %s", s)
	}
}

func FuzzParsePrimaryCaps(f *testing.F) {
	f.Add(EncodePrimaryCaps(PrimaryCaps{CNTLID: 1, CRT: 3, VQFRT: 4, VQRFAP: 4, VIFRT: 2, VIRFAP: 2}))
	f.Add([]byte{})
	f.Add(make([]byte, 79))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePrimaryCaps(b)
		if err != nil {
			return
		}
		if q, err := ParsePrimaryCaps(EncodePrimaryCaps(p)); err != nil || q != p {
			t.Errorf("round trip: %+v -> %+v (%v)", p, q, err)
		}
		_ = p.Free(VQ) + p.Free(VI)
	})
}

func FuzzParseSecondaryList(f *testing.F) {
	f.Add(EncodeSecondaryList([]Secondary{{SCID: 1, Online: true, VFN: 1, NVQ: 2, NVI: 1}, {SCID: 2, VFN: 2}}))
	f.Add([]byte{})
	f.Add([]byte{127})
	f.Add(append([]byte{1}, make([]byte, 62)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSecondaryList(b)
		if err != nil {
			return
		}
		if len(s) != int(b[0]) || len(s) > 127 {
			t.Fatalf("%d entries from a count of %d", len(s), b[0])
		}
		again, err := ParseSecondaryList(EncodeSecondaryList(s))
		if err != nil || len(again) != len(s) {
			t.Fatalf("round trip: %v", err)
		}
		for i := range s {
			if again[i] != s[i] {
				t.Errorf("entry %d: %+v -> %+v", i, s[i], again[i])
			}
		}
	})
}
