package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

const (
	userSrcTCP   = 5021 // on the host's loopback: the guest fetches from it through 10.0.2.2
	userReadyTCP = 5022 // the guest says its listener is up
	userFwdHost  = 5023 // hostfwd: the host's port ...
	userFwdGuest = 8022 // ... into the guest's
	userBytes    = 2 << 20
)

// userGuest takes its address by DHCP (busybox udhcpc), fetches a file
// from the host through the gateway, and serves one to the host through a
// port forward.
var userGuest = `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
cat > /tmp/dhcp.sh <<'EOF'
#!/bin/sh
case "$1" in
bound|renew)
	ip addr add "$ip/$mask" dev "$interface"
	ip route add default via "$router"
	echo "LEASE ip=$ip mask=$mask router=$router dns=$dns lease=$lease" ;;
esac
EOF
chmod +x /tmp/dhcp.sh
ip link set lo up
ip link set eth0 up
timeout 60 udhcpc -i eth0 -n -q -t 10 -T 2 -s /tmp/dhcp.sh > /tmp/udhcpc 2>&1; check dhcp $? "$(grep LEASE /tmp/udhcpc)"
echo "$(grep LEASE /tmp/udhcpc)"
echo "ADDR $(ip -4 addr show dev eth0 | grep inet | tr -s ' ')"
timeout 60 ping -c 2 -W 5 10.0.2.2 > /tmp/ping 2>&1; check ping-gateway $? "$(tail -1 /tmp/ping)"
timeout 180 nc 10.0.2.2 ` + fmt.Sprint(userSrcTCP) + ` > /tmp/rx < /dev/null; check fetch $?
echo "RXSUM $(sha256sum /tmp/rx | cut -d' ' -f1) $(wc -c < /tmp/rx)"
dd if=/dev/urandom of=/tmp/srv bs=1M count=` + fmt.Sprint(userBytes>>20) + ` 2>/dev/null
echo "SRVSUM $(sha256sum /tmp/srv | cut -d' ' -f1)"
nc -l -p ` + fmt.Sprint(userFwdGuest) + ` < /tmp/srv &
srv=$!
i=0; while ! netstat -ltn | grep -q ":` + fmt.Sprint(userFwdGuest) + ` " && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo ready | timeout 60 nc 10.0.2.2 ` + fmt.Sprint(userReadyTCP) + `; check ready $?
i=0; while kill -0 $srv 2>/dev/null && [ $i -lt 180 ]; do sleep 1; i=$((i+1)); done
! kill -0 $srv 2>/dev/null; check serve $?
echo VIO-GUEST-DONE
poweroff -f
`

// TestUserNetwork: a stock Debian guest on a virtio-net NIC backed by
// vio's user-mode network (no TAP, nothing configured on the host) gets
// its address by DHCP, pings the gateway, fetches 2 MiB from a server on
// the host's loopback through the gateway address, and the host fetches
// 2 MiB from a guest listener through a port forward; both transfers are
// checked by SHA-256 on both ends.
func TestUserNetwork(t *testing.T) {
	// The lab's L1 boots with its loopback down; any ordinary host has it
	// up. The gateway leads to it.
	if out := run(t, "ip", "-o", "link", "show", "lo"); !strings.Contains(out, "UP") {
		t.Logf("bringing the host's loopback up: %s", strings.TrimSpace(out))
		run(t, "ip", "link", "set", "lo", "up")
	}
	sent := randomSource(t, fmt.Sprintf("127.0.0.1:%d", userSrcTCP), userBytes)

	// When the guest says its listener is up, fetch from it through the
	// forward and hash what comes.
	ready, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", userReadyTCP))
	if err != nil {
		t.Fatal(err)
	}
	defer ready.Close()
	fwdSum := make(chan string, 1)
	go func() {
		c, err := ready.Accept()
		if err != nil {
			fwdSum <- "ready: " + err.Error()
			return
		}
		io.Copy(io.Discard, c)
		c.Close()
		f, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", userFwdHost), 30*time.Second)
		if err != nil {
			fwdSum <- "dial forward: " + err.Error()
			return
		}
		defer f.Close()
		f.SetDeadline(time.Now().Add(3 * time.Minute))
		// Exactly what the guest serves; closing then ends its nc.
		h := sha256.New()
		n, err := io.CopyN(h, f, userBytes)
		if err != nil {
			fwdSum <- fmt.Sprintf("after %d bytes: %v", n, err)
			return
		}
		fwdSum <- fmt.Sprintf("%s %d", hex.EncodeToString(h.Sum(nil)), n)
	}()

	initrd := labtest.Initramfs(t, userGuest, "virtio_pci", "virtio_net")
	log, stats := runSerial(t, 8*time.Minute, vioArgs(t, initrd, "--cpus", "2",
		"--net", fmt.Sprintf("user=on,hostfwd=tcp:127.0.0.1:%d-:%d,mac=52:54:00:12:34:58", userFwdHost, userFwdGuest),
		"--stats")...)
	r := readReport(t, log, "LEASE ", "ADDR ")
	r.expect(t, "dhcp", "ping-gateway", "fetch", "ready", "serve")
	if !strings.Contains(string(log), "LEASE ip=10.0.2.15 mask=24 router=10.0.2.2") {
		t.Errorf("guest's lease is not 10.0.2.15/24 via 10.0.2.2; serial:\n%s", log)
	}
	if got := r.value("RXSUM"); got != sent {
		t.Errorf("host → guest through the gateway: guest got %q, host sent %q", got, sent)
	}
	select {
	case s := <-fwdSum:
		if want := fmt.Sprintf("%s %d", r.value("SRVSUM"), userBytes); s != want {
			t.Errorf("guest → host through hostfwd: host got %q, guest served %q", s, want)
		}
	default:
		t.Error("guest → host through hostfwd: the host never finished its fetch")
	}
	t.Logf("vio's stats: %s", bytes.TrimSpace(stats))
}
