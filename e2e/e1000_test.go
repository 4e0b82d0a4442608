package e2e

import (
	"fmt"
)

const (
	e1000Tap     = "vioe1000"
	e1000SinkTCP = 5011 // guest → host
	e1000SrcTCP  = 5012 // host → guest
	e1000Bytes   = 2 << 20
	e1000Iperf   = 5213 // the host's iperf3 server
)

// e1000Guest uses the emulated NIC with the stock e1000 driver alone
// (TestEmulatedOnly runs it after ideGuest, in the same boot).
var e1000Guest = `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
drv=$(basename "$(readlink /sys/class/net/eth0/device/driver)")
[ "$drv" = e1000 ]; check driver $? "$drv"
[ ! -d /sys/module/virtio_net ]; check no-virtio $?
ip link set eth0 up && ip addr add ` + guestIP + `/24 dev eth0
i=0; while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done
[ "$(cat /sys/class/net/eth0/carrier)" = 1 ]; check link $? "$(cat /sys/class/net/eth0/speed)Mb/s after ${i}s"
timeout 60 ping -c 3 -W 5 ` + hostIP + ` > /tmp/ping 2>&1; check ping $? "$(tail -1 /tmp/ping)"
dd if=/dev/urandom of=/tmp/tx bs=1M count=` + fmt.Sprint(e1000Bytes>>20) + ` 2>/dev/null
echo "TXSUM $(sha256sum /tmp/tx | cut -d' ' -f1)"
timeout 180 nc ` + hostIP + ` ` + fmt.Sprint(e1000SinkTCP) + ` < /tmp/tx; check tcp-send $?
timeout 180 nc ` + hostIP + ` ` + fmt.Sprint(e1000SrcTCP) + ` > /tmp/rx < /dev/null; check tcp-recv-nc $?
echo "RXSUM $(sha256sum /tmp/rx | cut -d' ' -f1) $(wc -c < /tmp/rx)"
for dir in send recv; do
	flag=; [ $dir = recv ] && flag=-R
	timeout 60 iperf3 -c ` + hostIP + ` -p ` + fmt.Sprint(e1000Iperf) + ` -t 3 -f m $flag > /tmp/ip 2>&1
	check iperf-$dir $? "$(awk '/receiver/ {print $7, $8}' /tmp/ip)"
done
echo "IRQ $(grep eth0 /proc/interrupts | tr -s ' ')"
echo "STATS $(cat /sys/class/net/eth0/statistics/rx_packets) $(cat /sys/class/net/eth0/statistics/tx_packets) $(cat /sys/class/net/eth0/statistics/rx_errors)"
echo VIO-GUEST-DONE
poweroff -f
`
