package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

const (
	ideDiskSize = 64 << 20
	ideFSBlocks = 48 << 10 // 1 KiB blocks: the file system leaves the last 16 MiB alone
	idePatOff   = 56 << 20 // where the guest writes its pattern
	idePatSize  = 64 << 10
)

// ideGuest drives the emulated IDE disk and CD-ROM with the stock
// ata_piix, sd_mod and sr_mod drivers, and no virtio at all.
var ideGuest = `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
[ -d /sys/module/ata_piix ] && [ -b /dev/sda ]; check disk $? "$(cat /sys/block/sda/device/model 2>/dev/null)"
[ -b /dev/sr0 ]; check cdrom $? "$(cat /sys/block/sr0/device/model 2>/dev/null)"
[ ! -d /sys/module/virtio_blk ] && [ ! -d /sys/module/virtio_pci ]; check no-virtio $?
echo "XFER: $(cat /sys/class/ata_device/*/xfer_mode 2>/dev/null | tr '\n' ' ')"
mke2fs -F -L vioide /dev/sda ` + fmt.Sprint(ideFSBlocks) + ` >/tmp/mkfs.log 2>&1; check mkfs $? "$(tail -1 /tmp/mkfs.log)"
mkdir -p /mnt/d /mnt/cd
mount -t ext4 /dev/sda /mnt/d; check mount $?
dd if=/dev/urandom of=/mnt/d/data bs=1M count=8 2>/dev/null
mkdir -p /mnt/d/dir && dd if=/dev/urandom of=/mnt/d/dir/small bs=1k count=37 2>/dev/null
a=$(cat /mnt/d/data /mnt/d/dir/small | sha256sum | cut -d' ' -f1)
sync; umount /mnt/d; check umount $?
echo 3 > /proc/sys/vm/drop_caches
mount -t ext4 /dev/sda /mnt/d; check remount $?
b=$(cat /mnt/d/data /mnt/d/dir/small | sha256sum | cut -d' ' -f1)
[ -n "$a" ] && [ "$a" = "$b" ]; check ext4-checksum $? "$a $b"
echo "FILESUM $(sha256sum /mnt/d/data | cut -d' ' -f1)"
umount /mnt/d; check umount2 $?
dd if=/dev/urandom of=/tmp/pat bs=1k count=` + fmt.Sprint(idePatSize>>10) + ` 2>/dev/null
dd if=/tmp/pat of=/dev/sda bs=4096 seek=` + fmt.Sprint(idePatOff/4096) + ` conv=fsync 2>/dev/null; check pattern-write $?
echo "PATSUM $(sha256sum /tmp/pat | cut -d' ' -f1)"
mount -t iso9660 -o ro /dev/sr0 /mnt/cd; check cd-mount $?
(cd /mnt/cd && find . -type f | sort | while read f; do echo "CDSUM $f $(sha256sum "$f" | cut -d' ' -f1)"; done)
dd if=/dev/zero of=/dev/sr0 bs=2048 count=1 2>/tmp/err; [ $? != 0 ]; check cd-write-refused $? "$(cat /tmp/err)"
echo "CDSIZE $(blockdev --getsize64 /dev/sr0)"
umount /mnt/cd; check cd-umount $?
echo "IRQ $(grep -i -E 'ata|piix' /proc/interrupts | tr -s ' ' | tr '\n' ' ')"
echo VIO-GUEST-DONE
poweroff -f
`

// emulatedGuest is ideGuest and e1000Guest in one boot: a guest whose
// every device is an emulated one (issue 11's "only emulated devices").
var emulatedGuest = strings.TrimSuffix(ideGuest, "echo VIO-GUEST-DONE\npoweroff -f\n") +
	strings.Replace(e1000Guest, "check no-virtio $?", "check no-virtio-net $?", 1)

// TestEmulatedOnly: a Debian guest whose only devices are emulated ones
// (IDE disk, ATAPI CD-ROM, e1000 NIC; no virtio module loaded) uses each
// with its stock driver. Storage: it makes a file system on the IDE disk
// and checks it across a remount, writes a pattern at a known offset, and
// mounts an ISO 9660 image from the CD-ROM (a write to /dev/sr0 must be
// refused). Network: link, ping and a checksummed TCP transfer each way
// with the host over a TAP, and iperf3 both ways. The host then checks the image with e2fsck,
// reads the guest's file back with debugfs, finds the pattern where the
// guest put it, compares the CD's files and size with the ISO's, checks
// both TCP streams, and reads vio's counters: flushes reached the
// back-end, the bulk moved by DMA, the NIC moved the bytes. (Busybox has no
// eject applet: media changes are covered by the unit tests.)
func TestEmulatedOnly(t *testing.T) {
	mkiso := ""
	for _, p := range []string{"genisoimage", "xorrisofs", "mkisofs"} {
		if path, err := exec.LookPath(p); err == nil {
			mkiso = path
			break
		}
	}
	if mkiso == "" {
		t.Fatal("no genisoimage or xorriso on this host: run scripts/setup-host (apt-get install genisoimage)")
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "sub", "deeper"), 0o755)
	want := map[string]string{}
	put := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(tree, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		want["./"+name] = hex.EncodeToString(s[:])
	}
	big := make([]byte, 3<<20+12345)
	rand.Read(big)
	put("big.bin", big)
	put("hello.txt", []byte("hello from the host\n"))
	small := make([]byte, 4097)
	rand.Read(small)
	put("sub/deeper/odd.bin", small)
	iso := filepath.Join(dir, "cd.iso")
	run(t, mkiso, "-quiet", "-R", "-V", "VIOCD", "-o", iso, tree)

	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, ideDiskSize); err != nil {
		t.Fatal(err)
	}

	run(t, "ip", "tuntap", "add", e1000Tap, "mode", "tap")
	defer exec.Command("ip", "link", "del", e1000Tap).Run()
	run(t, "ip", "addr", "add", hostIP+"/24", "dev", e1000Tap)
	run(t, "ip", "link", "set", e1000Tap, "up")
	sink := hashSink(t, fmt.Sprintf("%s:%d", hostIP, e1000SinkTCP), e1000Bytes)
	sent := randomSource(t, fmt.Sprintf("%s:%d", hostIP, e1000SrcTCP), e1000Bytes)

	iperf := exec.Command("iperf3", "-s", "-B", hostIP, "-p", fmt.Sprint(e1000Iperf))
	if err := iperf.Start(); err != nil {
		t.Fatalf("the host's iperf3 server: %v", err)
	}
	defer func() { iperf.Process.Kill(); iperf.Wait() }()

	// iperf3 travels in the initramfs: this guest has no virtio disk for
	// a tools disk.
	initrd, _ := labtest.Guest{
		Script:   emulatedGuest,
		Modules:  []string{"ata_piix", "sd_mod", "sr_mod", "isofs", "ext4", "e1000"},
		Programs: []string{"/usr/bin/iperf3"},
		Inline:   true,
	}.Build(t)
	log, stats := runSerial(t, 8*time.Minute, vioArgs(t, initrd, "--cpus", "2",
		"--disk", "path="+disk+",iface=ide,serial=VIOIDE01",
		"--disk", "path="+iso+",iface=cdrom",
		"--net", "tap="+e1000Tap+",mac=52:54:00:12:34:57,model=e1000", "--stats")...)
	r := readReport(t, log, "IRQ ", "XFER:", "STATS ", "e1000")
	r.expect(t, "disk", "cdrom", "no-virtio", "mkfs", "mount", "umount", "remount", "ext4-checksum",
		"umount2", "pattern-write", "cd-mount", "cd-write-refused", "cd-umount",
		"driver", "no-virtio-net", "link", "ping", "tcp-send", "tcp-recv-nc", "iperf-send", "iperf-recv")
	if !bytes.Contains(log, []byte("VIO-GUEST-DONE")) {
		t.FailNow()
	}
	expectSum(t, "guest → host", sink, r.value("TXSUM"))
	if got := r.value("RXSUM"); got != sent {
		t.Errorf("host → guest: guest got %q, host sent %q", got, sent)
	}
	nic := deviceCounters(t, stats, "net0")
	for _, f := range []string{"TxFrames", "RxFrames", "TxBytes", "RxBytes", "Interrupts", "RegReads", "RegWrites"} {
		if nic[f] == 0 {
			t.Errorf("vio's counters: net0 %s = 0", f)
		}
	}
	if nic["RxBytes"] < e1000Bytes || nic["TxBytes"] < e1000Bytes {
		t.Errorf("vio's byte counters %v are below the %d bytes moved each way", nic, e1000Bytes)
	}
	cdSums := map[string]string{}
	for _, v := range r.values["CDSUM"] {
		if f := strings.Fields(v); len(f) == 2 {
			cdSums[f[0]] = f[1]
		}
	}
	fileSum, patSum, cdSize := r.value("FILESUM"), r.value("PATSUM"), r.value("CDSIZE")

	// The CD's files are the host's.
	for name, sum := range want {
		if cdSums[name] != sum {
			t.Errorf("CD file %s: guest read %q, host wrote %s", name, cdSums[name], sum)
		}
	}
	if len(cdSums) != len(want) {
		t.Errorf("guest saw %d files on the CD, want %d: %v", len(cdSums), len(want), cdSums)
	}
	if st, err := os.Stat(iso); err != nil {
		t.Error(err)
	} else if cdSize != fmt.Sprint(st.Size()) {
		t.Errorf("the guest sizes /dev/sr0 at %q bytes, the ISO has %d", cdSize, st.Size())
	}
	// The file system is clean and holds the guest's file.
	if out, err := exec.Command("e2fsck", "-fn", disk).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, out)
	}
	out, err := exec.Command("debugfs", "-R", "cat /data", disk).Output()
	if err != nil {
		t.Errorf("debugfs cat /data: %v", err)
	}
	if s := sha256.Sum256(out); fileSum == "" || hex.EncodeToString(s[:]) != fileSum {
		t.Errorf("/data on the image hashes %x (%d bytes), the guest wrote %s", s, len(out), fileSum)
	}
	// The pattern is where the guest wrote it.
	img, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if s := sha256.Sum256(img[idePatOff : idePatOff+idePatSize]); patSum == "" || hex.EncodeToString(s[:]) != patSum {
		t.Errorf("image bytes at %d hash %x, the guest wrote %s", idePatOff, s, patSum)
	}

	// Legacy mode, as a PC's PIIX: ISA IRQ 14, edge-triggered (its EOI
	// costs no exit, where native mode's level-triggered INTA# costs two).
	// (The e1000 half reports its IRQ under the same tag.)
	if irqs := strings.Join(r.values["IRQ"], " | "); !regexp.MustCompile(`\b14: [^|]*\b14-edge ata_piix`).MatchString(irqs) {
		t.Errorf("the IDE controller's interrupts, from /proc/interrupts: %q; want ata_piix on ISA IRQ 14, edge-triggered", irqs)
	}
	ctl := deviceCounters(t, stats, "ide")
	if ctl["flushes"] == 0 {
		t.Error("no FLUSH CACHE reached the back-end (sync and conv=fsync should send some)")
	}
	if ctl["write_bytes"] < 8<<20 || ctl["read_bytes"] < 3<<20 {
		t.Errorf("byte counters %v are below what the guest moved", ctl)
	}
	// The bulk moved by DMA: PIO would have cost one port access per two bytes.
	if moved := ctl["write_bytes"] + ctl["read_bytes"]; ctl["pio_accesses"] > moved/64 {
		t.Errorf("%v PIO accesses for %v bytes: the guest did not use DMA", ctl["pio_accesses"], moved)
	}
}
