package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/viovmm/vio/lab/labtest"
)

const (
	userSrcTCP   = 5021 // on the host's loopback: the guest fetches from it through 10.0.2.2
	userReadyTCP = 5022 // the guest says its listener is up
	userFwdHost  = 5023 // hostfwd: the host's port ...
	userFwdGuest = 8022 // ... into the guest's
	userBytes    = 2 << 20
	userDNS      = 5024 // the test's resolver, the DNS relay's upstream (dns_upstream=)
	userHTTP     = 5025 // a web server on the host's loopback
	userPage     = 256 << 10
	userName     = "files.vio.test" // what the test's resolver answers: the gateway
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
# A name through the DNS relay (10.0.2.3), then a page from the web
# server at the address it resolved to.
timeout 60 nslookup ` + userName + ` 10.0.2.3 > /tmp/ns 2>&1; ns=$?
addr=$(sed -n '/^Name:/,$ s/^Address:* *//p' /tmp/ns | head -1)
[ $ns = 0 ] && [ "$addr" = 10.0.2.2 ]; check dns $? "$(tr '\n' ' ' < /tmp/ns)"
timeout 120 wget -q -O /tmp/page "http://$addr:` + fmt.Sprint(userHTTP) + `/page"; check http $?
echo "PAGESUM $(sha256sum /tmp/page | cut -d' ' -f1) $(wc -c < /tmp/page)"
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
// checked by SHA-256 on both ends. The guest also resolves a name through
// the DNS relay, whose upstream is the test's resolver (dns_upstream=),
// and fetches a page from a web server on the host at the address it got.
func TestUserNetwork(t *testing.T) {
	// The lab's L1 boots with its loopback down; any ordinary host has it
	// up. The gateway leads to it.
	if out := run(t, "ip", "-o", "link", "show", "lo"); !strings.Contains(out, "UP") {
		t.Logf("bringing the host's loopback up: %s", strings.TrimSpace(out))
		run(t, "ip", "link", "set", "lo", "up")
	}
	sent := randomSource(t, fmt.Sprintf("127.0.0.1:%d", userSrcTCP), userBytes)
	asked := testResolver(t, fmt.Sprintf("127.0.0.1:%d", userDNS), userName+".", [4]byte{10, 0, 2, 2})
	page := webPage(t, fmt.Sprintf("127.0.0.1:%d", userHTTP), "/page", userPage)

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
		"--net", fmt.Sprintf("user=on,hostfwd=tcp:127.0.0.1:%d-:%d,dns_upstream=127.0.0.1:%d,mac=52:54:00:12:34:58", userFwdHost, userFwdGuest, userDNS),
		"--stats")...)
	r := readReport(t, log, "LEASE ", "ADDR ")
	r.expect(t, "dhcp", "ping-gateway", "dns", "http", "fetch", "ready", "serve")
	if n := asked.Load(); n == 0 {
		t.Errorf("the test's resolver never got a query for %s: the guest's answer did not come through the relay", userName)
	}
	if got := r.value("PAGESUM"); got != page {
		t.Errorf("web page through the gateway: guest got %q, host served %q", got, page)
	}
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

// testResolver answers DNS queries over UDP at addr: name's A record is
// a, its other types have no records, other names do not exist. It
// returns the count of queries for name's A record.
func testResolver(t *testing.T, addr, name string, a [4]byte) *atomic.Int64 {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var asked atomic.Int64
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
			if !strings.EqualFold(q.Name.String(), name) {
				rh.RCode = dnsmessage.RCodeNameError
			}
			b := dnsmessage.NewBuilder(nil, rh)
			b.EnableCompression()
			b.StartQuestions()
			b.Question(q)
			b.StartAnswers()
			if rh.RCode == dnsmessage.RCodeSuccess && q.Type == dnsmessage.TypeA {
				asked.Add(1)
				b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: a})
			}
			if msg, err := b.Finish(); err == nil {
				pc.WriteTo(msg, from)
			}
		}
	}()
	return &asked
}

// webPage serves n random bytes at path over HTTP at addr and returns
// "SHA256 n", as the guest's report gives it.
func webPage(t *testing.T, addr, path string, n int) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, n)
	rand.Read(body)
	mux := http.NewServeMux()
	mux.HandleFunc(path, func(w http.ResponseWriter, _ *http.Request) { w.Write(body) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: time.Minute}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	sum := sha256.Sum256(body)
	return fmt.Sprintf("%s %d", hex.EncodeToString(sum[:]), n)
}
