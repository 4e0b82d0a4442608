# The demo guest: runs as init in the guest vio boots and shows its I/O.
# Every step is checked: a failed step prints "DEMO-FAIL <step>: <why>"
# and powers off at once, so the demo can never claim what did not
# happen. Lines starting with DEMO- are evidence the host side checks.
fail() { echo "DEMO-FAIL $1: $2"; poweroff -f; sleep 60; }

echo
echo "=== vio demo guest: $(uname -sr), $(nproc) vCPUs, $(awk '/MemTotal/ {print $2}' /proc/meminfo) kB RAM, clock $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
echo "=== PCI devices (vendor:device class driver):"
for d in /sys/bus/pci/devices/*; do echo "    $(basename $d) $(cat $d/vendor):$(cat $d/device) class $(cat $d/class) $(basename "$(readlink $d/driver)" 2>/dev/null)"; done

[ -b /dev/vda ] || fail disk "no /dev/vda: the virtio-blk driver did not find the disk"
echo "=== virtio-blk: /dev/vda is $(($(cat /sys/block/vda/size) / 2048)) MiB; making a filesystem, writing a file, reading it back"
mke2fs -F -L viodemo /dev/vda >/tmp/mkfs.log 2>&1 || fail disk "mke2fs /dev/vda failed: $(cat /tmp/mkfs.log)"
mkdir -p /mnt
mount -t ext2 /dev/vda /mnt 2>/tmp/mount.log || fail disk "cannot mount the new filesystem on /dev/vda: $(cat /tmp/mount.log) (is the ext4 module, which serves ext2, in the initramfs?)"
grep -q " /mnt " /proc/mounts || fail disk "/mnt is not a mount point after mount"
dd if=/dev/urandom of=/mnt/demo.bin bs=1M count=4 2>/dev/null || fail disk "writing /mnt/demo.bin failed"
sync
wrote=$(sha256sum /mnt/demo.bin | cut -d' ' -f1)
umount /mnt || fail disk "umount failed"
echo 3 > /proc/sys/vm/drop_caches
mount -t ext2 -o ro /dev/vda /mnt || fail disk "cannot mount /dev/vda again"
read=$(sha256sum /mnt/demo.bin | cut -d' ' -f1)
umount /mnt
[ "$wrote" = "$read" ] || fail disk "read back $read, wrote $wrote"
echo "    wrote and read back 4 MiB, sha256 $wrote"
echo "DEMO-DISK file=/demo.bin sha256=$wrote"

[ -e /dev/hwrng ] || fail rng "no /dev/hwrng"
rng=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')
[ ${#rng} = 32 ] || fail rng "read ${#rng} hex digits from /dev/hwrng, want 32"
echo "=== virtio-rng: $rng from $(cat /sys/class/misc/hw_random/rng_current)"
echo "DEMO-RNG bytes=16"

[ -e /sys/class/net/eth0 ] || fail net "no eth0: the virtio-net driver did not find the NIC"
ip link set eth0 up && ip addr add 169.254.77.2/24 dev eth0 || fail net "cannot configure eth0"
echo "=== virtio-net: eth0 $(cat /sys/class/net/eth0/address), pinging the host's TAP end"
ping -c 3 -W 3 169.254.77.1 >/tmp/ping.log 2>&1
sed 's/^/    /' /tmp/ping.log | tail -2
received=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping.log)
[ "${received:-0}" -ge 1 ] || fail net "no ping reply from the host: $(tail -2 /tmp/ping.log)"
echo "DEMO-NET replies=$received"

echo "=== interrupts (MSI-X, delivered through KVM irqfds):"
grep virtio /proc/interrupts | awk '{n=0; for (i=2; i<NF; i++) if ($i ~ /^[0-9]+$/) n+=$i; printf "    %-24s %d\n", $NF, n}'
irqs=$(grep virtio /proc/interrupts | awk '{for (i=2; i<NF; i++) if ($i ~ /^[0-9]+$/) n+=$i} END {print n+0}')
[ "$irqs" -gt 0 ] || fail irq "no virtio interrupt was delivered"
echo "DEMO-IRQ virtio=$irqs"
echo "DEMO-DONE"
echo "=== powering off (ACPI S5 -> vio exits 0)"
poweroff -f
