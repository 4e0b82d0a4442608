//go:build linux

package vhost

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// requests lists every request number with the name the uapi gives it.
func requests() map[string]uintptr {
	return map[string]uintptr{
		"VHOST_GET_FEATURES":    ioctlGetFeatures,
		"VHOST_SET_FEATURES":    ioctlSetFeatures,
		"VHOST_SET_OWNER":       ioctlSetOwner,
		"VHOST_SET_MEM_TABLE":   ioctlSetMemTable,
		"VHOST_SET_LOG_BASE":    ioctlSetLogBase,
		"VHOST_SET_VRING_NUM":   ioctlSetVringNum,
		"VHOST_SET_VRING_ADDR":  ioctlSetVringAddr,
		"VHOST_SET_VRING_BASE":  ioctlSetVringBase,
		"VHOST_GET_VRING_BASE":  ioctlGetVringBase,
		"VHOST_SET_VRING_KICK":  ioctlSetVringKick,
		"VHOST_SET_VRING_CALL":  ioctlSetVringCall,
		"VHOST_SET_VRING_ERR":   ioctlSetVringErr,
		"VHOST_NET_SET_BACKEND": ioctlNetSetBackend,
	}
}

// TestRequestNumbers pins the request numbers to the values Linux's
// headers give on x86-64 (they encode direction, type, number and the
// argument's size, so a struct of the wrong size changes them).
func TestRequestNumbers(t *testing.T) {
	want := map[string]uintptr{
		"VHOST_GET_FEATURES":    0x8008af00,
		"VHOST_SET_FEATURES":    0x4008af00,
		"VHOST_SET_OWNER":       0x0000af01,
		"VHOST_SET_MEM_TABLE":   0x4008af03,
		"VHOST_SET_LOG_BASE":    0x4008af04,
		"VHOST_SET_VRING_NUM":   0x4008af10,
		"VHOST_SET_VRING_ADDR":  0x4028af11,
		"VHOST_SET_VRING_BASE":  0x4008af12,
		"VHOST_GET_VRING_BASE":  0xc008af12,
		"VHOST_SET_VRING_KICK":  0x4008af20,
		"VHOST_SET_VRING_CALL":  0x4008af21,
		"VHOST_SET_VRING_ERR":   0x4008af22,
		"VHOST_NET_SET_BACKEND": 0x4008af30,
	}
	for name, got := range requests() {
		if got != want[name] {
			t.Errorf("%s = %#x, want %#x", name, got, want[name])
		}
	}
}

// TestLayoutsAgainstHeaders compiles a C program against the host's
// linux/vhost.h and compares what it prints (request numbers, struct
// sizes, field offsets) with this package's. It is skipped where there is
// no C compiler or no kernel headers.
func TestLayoutsAgainstHeaders(t *testing.T) {
	cc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("no gcc: the uapi cannot be compiled here")
	}
	if _, err := os.Stat("/usr/include/linux/vhost.h"); err != nil {
		t.Skip("no /usr/include/linux/vhost.h (linux-libc-dev)")
	}
	var src strings.Builder
	src.WriteString("#include <stdio.h>\n#include <stddef.h>\n#include <linux/vhost.h>\nint main(void) {\n")
	for name := range requests() {
		fmt.Fprintf(&src, "printf(\"%s %%lu\\n\", (unsigned long)%s);\n", name, name)
	}
	for _, e := range []string{
		"sizeof(struct vhost_vring_state)", "sizeof(struct vhost_vring_file)", "sizeof(struct vhost_vring_addr)",
		"sizeof(struct vhost_memory)", "sizeof(struct vhost_memory_region)",
		"offsetof(struct vhost_vring_addr, desc_user_addr)", "offsetof(struct vhost_vring_addr, used_user_addr)",
		"offsetof(struct vhost_vring_addr, avail_user_addr)", "offsetof(struct vhost_vring_addr, log_guest_addr)",
		"offsetof(struct vhost_memory, regions)", "offsetof(struct vhost_memory_region, userspace_addr)",
		"VHOST_F_LOG_ALL", "VHOST_NET_F_VIRTIO_NET_HDR", "VHOST_VRING_F_LOG",
	} {
		fmt.Fprintf(&src, "printf(\"%s %%lu\\n\", (unsigned long)(%s));\n", strings.ReplaceAll(e, " ", "_"), e)
	}
	src.WriteString("return 0; }\n")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "l.c"), []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(cc, "-o", filepath.Join(dir, "l"), filepath.Join(dir, "l.c")).CombinedOutput(); err != nil {
		t.Fatalf("compiling against linux/vhost.h: %v\n%s", err, out)
	}
	out, err := exec.Command(filepath.Join(dir, "l")).Output()
	if err != nil {
		t.Fatal(err)
	}
	c := map[string]uint64{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, " ")
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		c[k] = n
	}
	for name, req := range requests() {
		if uint64(req) != c[name] {
			t.Errorf("%s = %#x, the headers say %#x", name, req, c[name])
		}
	}
	var a vringAddr
	for _, x := range []struct {
		key  string
		want uint64
	}{
		{"sizeof(struct_vhost_vring_state)", uint64(unsafe.Sizeof(vringState{}))},
		{"sizeof(struct_vhost_vring_file)", uint64(unsafe.Sizeof(vringFile{}))},
		{"sizeof(struct_vhost_vring_addr)", uint64(unsafe.Sizeof(vringAddr{}))},
		{"sizeof(struct_vhost_memory)", uint64(unsafe.Sizeof(memoryHeader{}))},
		{"sizeof(struct_vhost_memory_region)", memRegionSize},
		{"offsetof(struct_vhost_vring_addr,_desc_user_addr)", uint64(unsafe.Offsetof(a.Desc))},
		{"offsetof(struct_vhost_vring_addr,_used_user_addr)", uint64(unsafe.Offsetof(a.Used))},
		{"offsetof(struct_vhost_vring_addr,_avail_user_addr)", uint64(unsafe.Offsetof(a.Avail))},
		{"offsetof(struct_vhost_vring_addr,_log_guest_addr)", uint64(unsafe.Offsetof(a.LogGuest))},
		{"offsetof(struct_vhost_memory,_regions)", uint64(unsafe.Sizeof(memoryHeader{}))},
		{"offsetof(struct_vhost_memory_region,_userspace_addr)", 16},
		{"VHOST_F_LOG_ALL", uint64(bitOf(FLogAll))},
		{"VHOST_NET_F_VIRTIO_NET_HDR", uint64(bitOf(FNetVirtioNetHdr))},
		{"VHOST_VRING_F_LOG", 0}, // the flag's bit number; VringFLog is 1<<0
	} {
		got, ok := c[x.key]
		if !ok {
			t.Errorf("the C program printed no %s", x.key)
			continue
		}
		if got != x.want {
			t.Errorf("%s: the headers say %d, this package %d", x.key, got, x.want)
		}
	}
}

func bitOf(f uint64) int {
	for i := range 64 {
		if f == 1<<i {
			return i
		}
	}
	return -1
}

// TestMemTable checks the marshalled struct vhost_memory: the count, the
// padding, then each region's four 64-bit fields.
func TestMemTable(t *testing.T) {
	b := marshalMemTable([]MemoryRegion{{GuestAddr: 0, Size: 1 << 30, UserAddr: 0x7f0000000000}, {GuestAddr: 1 << 32, Size: 1 << 20, UserAddr: 0x7f1000000000}})
	if len(b) != 8+2*32 {
		t.Fatalf("%d bytes", len(b))
	}
	le := binary.NativeEndian
	if le.Uint32(b) != 2 || le.Uint32(b[4:]) != 0 {
		t.Fatalf("header % x", b[:8])
	}
	for i, w := range []uint64{0, 1 << 30, 0x7f0000000000, 0, 1 << 32, 1 << 20, 0x7f1000000000, 0} {
		if got := le.Uint64(b[8+8*i:]); got != w {
			t.Errorf("word %d = %#x, want %#x", i, got, w)
		}
	}
}

func TestSetMemTableRefusesEmpty(t *testing.T) {
	n := &Net{fd: -1}
	if err := n.SetMemTable(nil); err == nil {
		t.Fatal("no error for an empty table")
	}
	if err := n.SetMemTable(make([]MemoryRegion, MaxRegions+1)); err == nil {
		t.Fatal("no error for too many regions")
	}
}

// TestOpenWithout checks the sentence a host without vhost-net gets; it
// runs only where /dev/vhost-net is missing.
func TestOpenWithout(t *testing.T) {
	if _, err := os.Stat(DevicePath); err == nil {
		t.Skip(DevicePath + " exists here")
	}
	_, err := Open()
	if err == nil || !strings.Contains(err.Error(), "modprobe vhost_net") {
		t.Fatalf("Open without %s: %v", DevicePath, err)
	}
}
