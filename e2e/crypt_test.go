package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/initramfs"
	"github.com/viovmm/vio/lab/labtest"
)

// cryptGuest writes a pattern over the first 4 MiB of each encrypted disk
// and reports a checksum of the next 4 MiB, which the host wrote through
// dm-crypt before the boot.
const cryptGuest = `
for d in vda vdb; do
	yes VIO-CRYPT-GUEST-WRITE | head -c 4194304 | dd of=/dev/$d bs=65536 conv=fsync 2>/dev/null
	echo "VIO-CRYPT $d.write=$?"
	echo "VIO-CRYPT $d.sum=$(dd if=/dev/$d bs=65536 skip=64 count=64 2>/dev/null | sha256sum | cut -d' ' -f1)"
	echo "VIO-CRYPT $d.sectors=$(cat /sys/block/$d/size)"
done
poweroff -f
`

var cryptFact = regexp.MustCompile(`VIO-CRYPT (\w+)\.(\w+)=(\S*)`)

func repeatTo(s string, n int) []byte {
	return bytes.Repeat([]byte(s), n/len(s)+1)[:n]
}

// loadDmCrypt loads dm-crypt and the XTS cipher into the lab's kernel from
// the lab's module tree.
func loadDmCrypt(t *testing.T) {
	t.Helper()
	mods, err := initramfs.OpenModules(labtest.Assets(t).ModulesDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"dm_crypt", "xts", "algif_skcipher", "aesni_intel"} {
		files, err := mods.Resolve(name)
		if err != nil {
			t.Fatalf("module %s: %v", name, err)
		}
		for _, f := range files {
			out, err := exec.Command("insmod", filepath.Join(mods.Dir(), f)).CombinedOutput()
			if err != nil && !strings.Contains(string(out), "File exists") && name != "aesni_intel" {
				t.Fatalf("insmod %s: %v: %s", f, err, out)
			}
		}
	}
}

// dmOpen maps img through dm-crypt on a loop device and returns the
// plaintext device; cleanup undoes both.
func dmOpen(t *testing.T, img, keyFile, name string) (dev string, cleanup func()) {
	t.Helper()
	loop := strings.TrimSpace(run(t, "losetup", "--find", "--show", img))
	if out, err := exec.Command("cryptsetup", "open", "--key-file", keyFile, loop, name).CombinedOutput(); err != nil {
		exec.Command("losetup", "-d", loop).Run()
		t.Fatalf("cryptsetup open %s: %v\n%s", img, err, out)
	}
	cleanup = func() {
		exec.Command("cryptsetup", "close", name).Run()
		exec.Command("losetup", "-d", loop).Run()
	}
	dev = "/dev/mapper/" + name
	if _, err := os.Stat(dev); err != nil {
		// Without udev libdevmapper may leave the node to us.
		bd := strings.TrimSpace(run(t, "dmsetup", "info", "-c", "--noheadings", "-o", "blkdevname", name))
		dev = "/dev/" + bd
	}
	return dev, cleanup
}

// TestCryptDmCrypt: vio formats two LUKS2 images (512- and 4096-byte
// sectors); the host writes data into each through the kernel's dm-crypt;
// a guest reads it through vio's crypt disks and writes a pattern; the
// host reads the pattern back through dm-crypt. The image files hold
// neither pattern in clear.
func TestCryptDmCrypt(t *testing.T) {
	loadDmCrypt(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte("lab passphrase"), 0o600); err != nil {
		t.Fatal(err)
	}
	const mib = 1 << 20
	hostData := repeatTo("VIO-CRYPT-HOST-WRITE\n", 4*mib)
	guestData := repeatTo("VIO-CRYPT-GUEST-WRITE\n", 4*mib)
	var imgs []string
	var diskArgs []string
	for _, ss := range []string{"512", "4096"} {
		img := filepath.Join(dir, "enc"+ss+".img")
		run(t, vioBin, "image", "create", "-f", "raw", "--encrypt", "--sector-size", ss, "--key-file", key,
			"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img, "16M")
		dev, closeDM := dmOpen(t, img, key, "vio-e2e-"+ss)
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			closeDM()
			t.Fatal(err)
		}
		_, err = f.WriteAt(hostData, 4*mib)
		if err == nil {
			err = f.Sync()
		}
		f.Close()
		closeDM()
		if err != nil {
			t.Fatalf("writing through dm-crypt: %v", err)
		}
		imgs = append(imgs, img)
		diskArgs = append(diskArgs, "--disk", "path="+img+",encrypt=on,key_file="+key)
	}

	initrd := labtest.Initramfs(t, cryptGuest, "virtio_pci", "virtio_blk")
	out, err := runVMM(t, 4*time.Minute, vioArgs(t, initrd, diskArgs...)...)
	if err != nil {
		t.Fatalf("vio: %v\n%s", err, out)
	}
	facts := map[string]string{}
	for _, m := range cryptFact.FindAllStringSubmatch(out, -1) {
		facts[m[1]+"."+m[2]] = m[3]
	}
	t.Logf("guest: %v", facts)
	wantSum := strings.Fields(runIn(t, hostData, "sha256sum"))[0]
	for i, d := range []string{"vda", "vdb"} {
		if facts[d+".write"] != "0" {
			t.Errorf("%s: the guest's write failed (%q)\n%s", d, facts[d+".write"], out)
		}
		if facts[d+".sectors"] != "32768" {
			t.Errorf("%s: the guest sees %s sectors, want 32768 (16 MiB)", d, facts[d+".sectors"])
		}
		if facts[d+".sum"] != wantSum {
			t.Errorf("%s: the guest read %s where dm-crypt wrote data with sum %s", d, facts[d+".sum"], wantSum)
		}
		dev, closeDM := dmOpen(t, imgs[i], key, "vio-e2e-check")
		got := make([]byte, 4*mib)
		f, err := os.Open(dev)
		if err == nil {
			_, err = f.ReadAt(got, 0)
			f.Close()
		}
		closeDM()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, guestData) {
			t.Errorf("%s: dm-crypt reads other data than the guest wrote through vio", d)
		}
		raw, err := os.ReadFile(imgs[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := plaintextIn(raw, hostData, guestData); err != nil {
			t.Errorf("%s: %v", imgs[i], err)
		}
	}
}

// plaintextIn reports a 16-byte block of any of the plaintexts found at a
// 16-byte-aligned offset of image.
func plaintextIn(image []byte, plains ...[]byte) error {
	blocks := map[string]bool{}
	for _, p := range plains {
		for i := 0; i+16 <= len(p); i += 16 {
			blocks[string(p[i:i+16])] = true
		}
	}
	for i := 0; i+16 <= len(image); i += 16 {
		if blocks[string(image[i:i+16])] {
			return fmt.Errorf("plaintext %q found at offset %d of the image", image[i:i+16], i)
		}
	}
	return nil
}

func runIn(t *testing.T, stdin []byte, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		t.Fatalf("%s: %v: %s", name, err, ee.Stderr)
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
