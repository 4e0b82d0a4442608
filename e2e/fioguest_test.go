package e2e

import (
	"cmp"
	"fmt"
	"strings"
)

// fioMigGuest is the guest script of the migration tests that write disks
// while the VM moves. It runs prelude, writes migDiskPattern at
// migDiskPatternOff of each disk in data, then runs rounds of fio
// --verify (new random data each round; fioOpts picks the engine and
// depth) on all of them at once until the host writes GO into the
// mailbox disk box, and writes its account to the disk result before it
// powers off. Meanwhile it reports every second as migguest does
// ("VIO-MIG pass=N bad=N gap_us=N", which migrateHops reads): pass counts
// the seconds, bad the failed fio rounds and the kernel's I/O errors so
// far, so that a failure shows at once, and gap_us is the guest clock's
// time between two reports.
//
// The account is "VIO-DISK key=value" lines (migDiskFact): rounds, fails,
// go, fioerr, failure, ioerr, a sha256 of fio's region of each data disk
// as the guest last read it (sum<name>), and complete=1 last.
func fioMigGuest(prelude string, data []fioMigDisk, fioOpts, box, result string) string {
	var b strings.Builder
	b.WriteString("echo 0 > /tmp/fails\n" + prelude)
	fmt.Fprintf(&b, "yes %q | head -c %d > /tmp/pattern\n", migDiskPattern, migDiskPatternLen)
	devs := make([]string, len(data))
	for i, d := range data {
		devs[i] = d.dev
	}
	fmt.Fprintf(&b, "for d in %s; do\n\tdd if=/tmp/pattern of=$d bs=65536 seek=%d conv=fsync 2>/dev/null || echo 1 > /tmp/fails\ndone\n",
		strings.Join(devs, " "), migDiskPatternOff/65536)
	b.WriteString(`( n=0; prev=$(cut -d' ' -f1 /proc/uptime)
  while :; do
	sleep 1
	n=$((n+1))
	now=$(cut -d' ' -f1 /proc/uptime)
	bad=$(( $(cat /tmp/fails) + $(dmesg | grep -c 'I/O error') ))
	echo "VIO-MIG pass=$n bad=$bad gap_us=$(awk -v a=$prev -v b=$now 'BEGIN { printf "%d", (b-a)*1000000 }')"
	prev=$now
  done ) &
rounds=0
while :; do
`)
	fmt.Fprintf(&b, "\tfio %s --direct=1 --bs=4k --rw=randwrite --size=%dM --randrepeat=0 \\\n\t\t--verify=crc32c --do_verify=1 --verify_fatal=1", fioOpts, migDiskFioMiB)
	for _, d := range data {
		fmt.Fprintf(&b, " --name=%s --filename=%s", cmp.Or(d.name, "vu"), d.dev)
	}
	fmt.Fprintf(&b, ` > /tmp/fio.log 2>&1
	if [ $? -ne 0 ]; then
		echo $(( $(cat /tmp/fails) + 1 )) > /tmp/fails
		cp /tmp/fio.log /tmp/fio.failed
	fi
	rounds=$((rounds+1))
	dd if=%[1]s bs=512 count=1 iflag=direct 2>/dev/null | grep -q GO && break
	[ $rounds -ge 1000 ] && break
done
{
	echo "VIO-DISK rounds=$rounds"
	echo "VIO-DISK fails=$(cat /tmp/fails)"
	echo "VIO-DISK go=$(dd if=%[1]s bs=512 count=1 iflag=direct 2>/dev/null | grep -c GO)"
	echo "VIO-DISK fioerr=$(grep -o 'err= *[0-9]*' /tmp/fio.log | tr -d ' ' | sort -u | tr '\n' ',')"
	echo "VIO-DISK failure=$(grep -m1 -iE 'verify|error' /tmp/fio.failed 2>/dev/null | tr -c 'A-Za-z0-9=:,.\n' '_')"
	echo "VIO-DISK ioerr=$(dmesg | grep -c 'I/O error')"
`, box)
	for _, d := range data {
		fmt.Fprintf(&b, "\techo \"VIO-DISK sum%s=$(dd if=%s bs=1M count=%d iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)\"\n",
			d.name, d.dev, migDiskFioMiB)
	}
	fmt.Fprintf(&b, `	echo "VIO-DISK complete=1"
} > /tmp/result
dd if=/tmp/result of=%s bs=4096 count=1 conv=sync,fsync 2>/dev/null
echo VIO-DISK-DONE
poweroff -f
`, result)
	return b.String()
}

// fioMigDisk is a data disk of fioMigGuest: its device in the guest, and
// the name its fio job and its hash go by ("" for a lone disk: its hash is
// then plain "sum").
type fioMigDisk struct{ dev, name string }
