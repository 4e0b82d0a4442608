# The demo guest: runs as init in the guest vio boots, shows its I/O.
echo
echo "=== vio demo guest: $(uname -sr), $(nproc) vCPUs, $(awk '/MemTotal/ {print $2}' /proc/meminfo) kB RAM, clock $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
echo "=== PCI devices (vendor:device class):"
for d in /sys/bus/pci/devices/*; do echo "    $(basename $d) $(cat $d/vendor):$(cat $d/device) class $(cat $d/class) driver $(basename "$(readlink $d/driver)" 2>/dev/null)"; done
echo "=== virtio-blk: /dev/vda is $(($(cat /sys/block/vda/size) / 2048)) MiB; making ext2, writing and reading back a file"
mkfs.ext2 /dev/vda >/dev/null 2>&1
mkdir -p /mnt && mount /dev/vda /mnt
dd if=/dev/urandom of=/mnt/file bs=1M count=4 2>/dev/null && sync
echo "    wrote  $(sha256sum /mnt/file | cut -c1-16)..."
umount /mnt && echo 3 > /proc/sys/vm/drop_caches && mount /dev/vda /mnt
echo "    read   $(sha256sum /mnt/file | cut -c1-16)... (same hash: the data went through virtio-blk to the image)"
umount /mnt
echo "=== virtio-rng: $(dd if=/dev/hwrng bs=8 count=1 2>/dev/null | od -An -tx1) from $(cat /sys/class/misc/hw_random/rng_current)"
if [ -e /sys/class/net/eth0 ]; then
	ip link set eth0 up && ip addr add 169.254.77.2/24 dev eth0
	echo "=== virtio-net: eth0 $(cat /sys/class/net/eth0/address), pinging the host's TAP end"
	ping -c 3 -W 3 169.254.77.1 | tail -2 | sed 's/^/    /'
fi
echo "=== interrupts (MSI-X, delivered through KVM irqfds):"
grep -E "virtio" /proc/interrupts | awk '{printf "    %-22s %s\n", $NF, $2+$3}'
echo "=== powering off (ACPI S5 -> vio exits 0)"
poweroff -f
