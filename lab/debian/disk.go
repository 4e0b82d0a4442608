package debian

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// grubImages makes GRUB's core image for BIOS boot with the chroot's own
// grub-mkimage (from grub-pc-bin), holding what it needs to read the GPT
// root and find its prefix there, and returns it with boot.img, the MBR
// code that loads it.
func grubImages(ctx context.Context, root string) (core, boot []byte, err error) {
	const out = "/vio-core.img"
	cmd := exec.CommandContext(ctx, "chroot", root, "grub-mkimage", "-O", "i386-pc", "-o", out,
		"-p", fmt.Sprintf("(hd0,gpt%d)/boot/grub", RootPartition), "biosdisk", "part_gpt", "ext2")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("grub-mkimage in the chroot: %v: %s", err, b)
	}
	core, err = os.ReadFile(filepath.Join(root, out))
	os.Remove(filepath.Join(root, out))
	if err != nil {
		return nil, nil, err
	}
	boot, err = os.ReadFile(filepath.Join(root, "usr/lib/grub/i386-pc/boot.img"))
	if err != nil {
		return nil, nil, err
	}
	return core, boot, nil
}

// makeDisk makes img: a sparse raw file with a GPT (a BIOS boot partition
// and the root) and, in the root partition, an ext4 file system filled
// from dir with mkfs.ext4 -d, labelled "root" with the given UUID.
func makeDisk(ctx context.Context, img, dir, uuid string) error {
	if err := checkNoMounts(dir); err != nil {
		return err
	}
	f, err := os.Create(img)
	if err != nil {
		return err
	}
	if err := f.Truncate(SizeBytes); err != nil {
		f.Close()
		return err
	}
	f.Close()
	table := fmt.Sprintf("label: gpt\nfirst-lba: %d\n"+
		"start=%d, size=%d, type=21686148-6449-6E6F-744E-656564454649, name=\"BIOS boot\"\n"+
		"start=%d, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"root\"\n",
		biosBootStart, biosBootStart, biosBootSectors, RootStart/512)
	cmd := exec.CommandContext(ctx, "sfdisk", "--quiet", img)
	cmd.Stdin = strings.NewReader(table)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sfdisk: %v: %s", err, b)
	}
	js, err := exec.CommandContext(ctx, "sfdisk", "-J", img).Output()
	if err != nil {
		return fmt.Errorf("sfdisk -J: %w", err)
	}
	var pt struct {
		PartitionTable struct {
			Partitions []struct {
				Start, Size int64
			}
		}
	}
	if err := json.Unmarshal(js, &pt); err != nil {
		return fmt.Errorf("sfdisk -J: %w", err)
	}
	parts := pt.PartitionTable.Partitions
	if len(parts) != 2 || parts[1].Start*512 != RootStart {
		return fmt.Errorf("sfdisk made an unexpected table: %s", js)
	}
	size := parts[1].Size * 512
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "root", "-U", uuid,
		"-E", fmt.Sprintf("offset=%d", RootStart), "-d", dir, img, fmt.Sprintf("%dk", size/1024)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.ext4 -d: %v: %s", err, out)
	}
	// mkfs.ext4 with an offset may leave the file shorter or longer than
	// the table says; the backup GPT is at its end.
	if st, err := os.Stat(img); err != nil || st.Size() != SizeBytes {
		return fmt.Errorf("mkfs.ext4 changed the disk's size (%v)", err)
	}
	return nil
}

// checkNoMounts refuses a root with something still mounted under it
// (debootstrap mounts /proc and /sys while it installs): mkfs.ext4 -d
// would copy them.
func checkNoMounts(dir string) error {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return err
	}
	abs, _ := filepath.Abs(dir)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && strings.HasPrefix(f[1], abs+"/") {
			return fmt.Errorf("%s is still mounted in the chroot after debootstrap; unmount it and build again", f[1])
		}
	}
	return nil
}

// Offsets in GRUB's i386-pc boot sector (boot.img) and in the first
// sector of its core image (diskboot.img), from GRUB's boot.h and
// diskboot.S.
const (
	bootBPBStart     = 0x03  // a DOS BIOS parameter block may live here
	bootBPBEnd       = 0x5a  //
	bootKernelSector = 0x5c  // LBA (64 bits) of core.img's first sector
	bootDrive        = 0x64  // 0xff: the drive the BIOS booted from
	bootDriveCheck   = 0x66  // a 2-byte jump that a hard disk install turns into NOPs
	bootTableStart   = 0x1b8 // disk signature and partition table: kept from the disk
	bootTableEnd     = 0x1fe // before the 0x55AA signature
	blocklistSize    = 12    // start (64 bits), sectors (16), load segment (16)
	coreLoadSegment  = 0x820 // where the sectors after the first are loaded
)

// installGRUB makes the disk img boot GRUB from a BIOS: it writes core
// into the BIOS boot partition, and boot.img's code into the MBR around
// the protective partition table, telling each where the next stage is
// (what grub-bios-setup does when it embeds into a GPT's BIOS boot
// partition).
func installGRUB(img string, boot, core []byte) error {
	if len(boot) != 512 {
		return fmt.Errorf("GRUB's boot.img is %d bytes, want 512", len(boot))
	}
	sectors := (len(core) + 511) / 512
	if sectors < 2 || sectors > biosBootSectors {
		return fmt.Errorf("GRUB's core image is %d sectors; the BIOS boot partition holds %d", sectors, biosBootSectors)
	}
	core = append(core, make([]byte, sectors*512-len(core))...)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	mbr := make([]byte, 512)
	if _, err := f.ReadAt(mbr, 0); err != nil {
		return err
	}
	if err := patchGRUB(boot, core, mbr, biosBootStart); err != nil {
		return err
	}
	if _, err := f.WriteAt(core, biosBootStart*512); err != nil {
		return err
	}
	if _, err := f.WriteAt(boot, 0); err != nil {
		return err
	}
	return f.Close()
}

// patchGRUB fills in boot (GRUB's boot.img, becoming the new MBR) and core
// (its core image, padded to whole sectors, to be written at LBA start):
// the MBR keeps the disk's partition table and any BPB from mbr and
// points at core's first sector; core's first sector lists the rest of
// core as one run of sectors.
func patchGRUB(boot, core, mbr []byte, start uint64) error {
	sectors := len(core) / 512
	copy(boot[bootBPBStart:bootBPBEnd], mbr[bootBPBStart:bootBPBEnd])
	binary.LittleEndian.PutUint64(boot[bootKernelSector:], start)
	boot[bootDrive] = 0xff
	boot[bootDriveCheck], boot[bootDriveCheck+1] = 0x90, 0x90
	copy(boot[bootTableStart:bootTableEnd], mbr[bootTableStart:bootTableEnd])
	if boot[510] != 0x55 || boot[511] != 0xaa {
		return errors.New("GRUB's boot.img lacks the boot signature")
	}
	first := core[512-blocklistSize : 512]
	if seg := binary.LittleEndian.Uint16(first[10:]); seg != coreLoadSegment {
		return fmt.Errorf("GRUB's core image does not start with diskboot.img (load segment %#x)", seg)
	}
	binary.LittleEndian.PutUint64(first[0:], start+1)
	binary.LittleEndian.PutUint16(first[8:], uint16(sectors-1))
	// The entry below ends the list.
	end := core[512-2*blocklistSize : 512-blocklistSize]
	for _, b := range end {
		if b != 0 {
			return errors.New("GRUB's diskboot.img has code where its second block list entry belongs")
		}
	}
	return nil
}

// Copy copies the image src to dst as a sparse file (cp --sparse=always):
// boot a copy, never the cached image.
func Copy(src, dst string) error {
	if out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("copying %s: %v: %s", src, err, out)
	}
	return nil
}
