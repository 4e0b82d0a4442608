package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// vuMigTCPHops is how many TCP migrations TestVhostUserMigration makes
// before its local one.
const vuMigTCPHops = 3

// vuMigGuest is fioMigGuest on the vhost-user disk (vda) at iodepth 8,
// the mailbox on vdb and the result disk vdc.
var vuMigGuest = fioMigGuest("", []fioMigDisk{{"/dev/vda", ""}}, "--ioengine=libaio --iodepth=8", "/dev/vdb", "/dev/vdc")

// TestVhostUserMigration migrates a guest whose disk a vhost-user
// back-end serves (qemu-storage-daemon, exporting a raw image as
// vhost-user-blk on one socket), while the guest runs fio --verify on it
// round after round at iodepth 8: vuMigTCPHops times over TCP between two
// vio processes (pre-copy: the back-end's dirty log, LOG_SHMFD and
// LOG_ALL, tells each source which pages of guest RAM it wrote while RAM
// was copied), then once locally to a third vio (guest RAM's memfd handed
// over). At each switchover the source stops the rings (GET_VRING_BASE),
// saves where they stopped and lets the back-end go; the destination,
// built without connecting, connects to the same socket once the state
// is restored and starts the rings there (docs/migration.md, "vhost-user
// devices"). Every hop (migrateHops) must keep the guest going; every fio
// round must pass and the kernel report no I/O error; at the end the
// pattern the guest wrote before the first hop reads back from the image
// on the host, and fio's region of it hashes on the host as the guest
// last read it.
func TestVhostUserMigration(t *testing.T) {
	labRetry(t, func(t *testing.T, reset *labReset) {
		if _, err := exec.LookPath("qemu-storage-daemon"); err != nil {
			t.Skipf("qemu-storage-daemon is not installed in the lab: %v", err)
		}
		a := labtest.Assets(t)
		dir := t.TempDir()
		img, sock := filepath.Join(dir, "vu.raw"), filepath.Join(dir, "vu.sock")
		box, result := filepath.Join(dir, "box.img"), filepath.Join(dir, "result.img")
		run(t, "truncate", "-s", "64M", img)
		run(t, "truncate", "-s", "1M", box)
		run(t, "truncate", "-s", "1M", result)
		startQSDExport(t, img, sock)
		initrd, tools := labtest.Guest{
			Script:   vuMigGuest,
			Modules:  []string{"virtio_pci", "virtio_blk"},
			Programs: []string{"/usr/bin/fio"},
		}.Build(t)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()

		vios := [2]*hopVio{startHopVio(t, ctx, dir, "a"), startHopVio(t, ctx, dir, "b")}
		put(t, ctx, vios[0].cl, "vm.create", `{
	  "payload": {"kernel": "`+a.Kernel+`", "initramfs": "`+initrd+`", "cmdline": "console=ttyS0 panic=-1 quiet"},
	  "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
	  "memory": {"size": `+strconv.Itoa(guestMemMiB<<20)+`, "shared": true},
	  "disks": [
	    {"id": "vu", "vhost_user": true, "vhost_socket": "`+sock+`"},
	    {"id": "box", "path": "`+box+`", "image_type": "Raw", "readonly": true},
	    {"id": "result", "path": "`+result+`", "image_type": "Raw"},
	    {"id": "tools", "path": "`+tools+`", "image_type": "Raw", "readonly": true}
	  ],
	  "serial": {"mode": "Tty"}, "console": {"mode": "Off"}
	}`)
		put(t, ctx, vios[0].cl, "vm.boot", "")
		var last migLine
		var baseGap time.Duration
		for i := 0; i < 4; i++ {
			last = vios[0].p.next(t, ctx, "a")
			if i > 0 {
				baseGap = max(baseGap, last.gap)
			}
		}
		t.Logf("guest on a: pass %d, fio running on its vhost-user disk; longest clock gap between reports: %v", last.pass, baseGap)
		figs := migrateHops(t, ctx, vios, last, hopPlan{
			reset: reset,
			hops:  vuMigTCPHops,
			url:   func(int) string { return "tcp:127.0.0.1:0" },
			check: func(m map[string]string) string {
				if m["reason"] == "local" || m["data_pages"] == "0" {
					return "no RAM was copied"
				}
				return ""
			},
		})
		t.Logf("MIGRATION with a vhost-user disk over TCP: %s", hopSummary(figs, baseGap))

		// Then once locally, to a third vio (migrateHops counts each vio's
		// receiving-migration events from its first).
		at := vios[vuMigTCPHops%2]
		last = at.p.next(t, ctx, at.name)
		c := startHopVio(t, ctx, dir, "c")
		figs = migrateHops(t, ctx, [2]*hopVio{at, c}, last, hopPlan{
			reset: reset,
			hops:  1,
			local: true,
			url:   func(int) string { return "unix:" + filepath.Join(dir, "local.sock") },
			check: func(m map[string]string) string {
				if m["reason"] != "local" || m["data_pages"] != "0" {
					return "not a local migration"
				}
				return ""
			},
		})
		t.Logf("LOCAL MIGRATION with a vhost-user disk: %s", hopSummary(figs, baseGap))

		// The guest ends its fio round, writes its account and powers off.
		f, err := os.OpenFile(box, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("GO"), 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		for vmState(t, ctx, c.cl) != "Shutdown" {
			select {
			case <-ctx.Done():
				t.Fatal("the guest on c did not finish and power off after GO")
			case <-time.After(200 * time.Millisecond): // polling vm.info, as apiClient polls for its socket
			}
		}
		acct, err := os.ReadFile(result)
		if err != nil {
			t.Fatal(err)
		}
		facts := map[string]string{}
		for _, m := range migDiskFact.FindAllStringSubmatch(string(bytes.TrimRight(acct, "\x00")), -1) {
			facts[m[1]] = m[2]
		}
		t.Logf("guest: %v", facts)
		switch {
		case facts["complete"] != "1":
			t.Fatalf("the guest's account is incomplete: %q", bytes.TrimRight(acct, "\x00"))
		case facts["fails"] != "0" || facts["ioerr"] != "0" || facts["fioerr"] != "err=0,":
			t.Fatalf("the guest saw an error: %v", facts)
		case facts["go"] != "1":
			t.Fatalf("the guest stopped without the host's GO (after %s rounds): %v", facts["rounds"], facts)
		}
		if n, _ := strconv.Atoi(facts["rounds"]); n < 1 {
			t.Fatalf("no fio round finished: %v", facts)
		}

		// The host's view of the image (qemu-storage-daemon writes through
		// the page cache this reads).
		b, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		want := []byte(strings.Repeat(migDiskPattern+"\n", migDiskPatternLen/len(migDiskPattern)+1)[:migDiskPatternLen])
		if !bytes.Equal(b[migDiskPatternOff:migDiskPatternOff+migDiskPatternLen], want) {
			t.Error("the image does not hold the pattern the guest wrote before the first hop")
		}
		sum := sha256.Sum256(b[:migDiskFioMiB<<20])
		if got := hex.EncodeToString(sum[:]); got != facts["sum"] {
			t.Errorf("the image's first %d MiB hash to %s on the host, the guest read %s", migDiskFioMiB, got, facts["sum"])
		}
	})
}
