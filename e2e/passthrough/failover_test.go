package passthrough

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/lab"
	"github.com/viovmm/vio/lab/labtest"
)

// The failover test's network in L1: a bridge with L1's end of the NIC
// pair's wire (its e1000) and the standby's TAP, and L1's address. The
// guest's e1000e (the pair's other NIC, passed through) reaches the
// bridge over the wire, its virtio-net standby over the TAP.
const (
	foBridge  = "viofobr0"
	foTap     = "viofotap0"
	foHostIP  = "10.0.78.1"
	foGuestIP = "10.0.78.2"
	foPort    = 5078
	// foRate paces the stream (bytes/s): slow enough that the guest's
	// RAM holds all of it and its console keeps up, fast enough that each
	// phase moves a megabyte in seconds.
	foRate = 256 << 10
	// foPhase is what the guest must receive in a phase with its
	// primary; foStandby what it must receive while it has none.
	foPhase   = 1 << 20
	foStandby = 128 << 10
)

// foGuest finds the net_failover device the virtio-net standby made
// (the netdev its slaves' master links name), puts the guest's address
// on it, receives one TCP stream into /tmp/rx with busybox nc and, when
// the peer closes it, reports the stream's hash and length. Every
// second it reports which primary is enslaved (- for none) and the
// bytes each slave and the stream received.
var foGuest = `
drv() { basename "$(readlink /sys/class/net/$1/device/driver 2>/dev/null)"; }
m=""; i=0
while [ -z "$m" ] && [ $i -lt 300 ]; do
	for n in /sys/class/net/*; do [ -e $n/master ] && m=$(basename "$(readlink $n/master)"); done
	[ -z "$m" ] && sleep 0.1; i=$((i+1))
done
slaves() { for n in /sys/class/net/*; do n=${n##*/}; [ "$(basename "$(readlink /sys/class/net/$n/master 2>/dev/null)")" = "$m" ] && echo "$n:$(drv $n)"; done; }
i=0; while [ "$(slaves | wc -l)" -lt 2 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
# Linux before 6.2 runs IPv6 autoconfiguration on net_failover's slaves
# (6.2 marks them IFF_NO_ADDRCONF): the standby would send router
# solicitations of its own, with the shared MAC, for as long as the guest
# runs (RFC 7559's back-off: 4, 8, 16 ... s), each moving L1's bridge to
# its TAP while the primary carries the stream, whose frames net_failover
# then drops on the standby. Seen in the lab; docs/failover.md.
for s in $(slaves); do [ "${s#*:}" = virtio_net ] && echo 1 > /proc/sys/net/ipv6/conf/${s%%:*}/disable_ipv6; done
echo "FOMASTER $m $(cat /sys/class/net/$m/address 2>/dev/null)"
echo "FOSLAVES $(slaves | tr '\n' ' ')"
echo "FOMOD $(grep -E '^(net_failover|failover) ' /proc/modules | cut -d' ' -f1,3,4 | tr '\n' ' ')"
ip link set lo up
ip link set $m up && ip addr add ` + foGuestIP + `/24 dev $m
# busybox nc leaves on the peer's FIN only once its own stdin has ended.
( nc -l -p ` + strconv.Itoa(foPort) + ` < /dev/null > /tmp/rx; echo "FONC $?"; echo "FODONE $(sha256sum /tmp/rx | cut -d' ' -f1) $(wc -c < /tmp/rx)" ) &
dmesg -c > /dev/null
echo FOREADY
while :; do
	pr=-; prx=0; srx=0
	for s in $(slaves); do
		n=${s%%:*}; r=$(cat /sys/class/net/$n/statistics/rx_bytes 2>/dev/null || echo 0)
		if [ "${s#*:}" = virtio_net ]; then srx=$r; else pr=$n; prx=$r; fi
	done
	irq=0; [ "$pr" != - ] && irq=$(grep "$pr" /proc/interrupts | awk '{s=0; for (i=2; i<=NF && $i ~ /^[0-9]+$/; i++) s+=$i; printf "%s%s:%d", sep, $NF, s; sep=","}')
	drop=0; [ "$pr" != - ] && drop=$(( $(cat /sys/class/net/$pr/statistics/rx_dropped) + $(cat /sys/class/net/$pr/statistics/rx_missed_errors) ))
	echo "FOSTAT primary=$pr prx=$prx srx=$srx rx=$(wc -c < /tmp/rx 2>/dev/null || echo 0) pirq=$irq pdrop=$drop"
	dmesg -c 2>/dev/null | sed 's/^/FOKMSG /'
	sleep 1
done
`

// TestNetFailoverMigration: a guest whose NIC is the lab's e1000e passed
// through (vfio-pci in L1), with a virtio-net standby of the same MAC on
// a TAP (standby=on, failover=sb), has Linux's net_failover pair them. A
// TCP stream of known data runs from L1 to the guest while the VM
// migrates to a second vio in L1: the source unplugs the primary first
// (the stream goes on over the standby), migrates, and the destination
// plugs the same e1000e in again once the guest runs there (the guest
// enslaves it and the stream goes over it again). L1's counters of the
// two paths say which carried each phase; the stream must arrive whole,
// its hash as sent.
func TestNetFailoverMigration(t *testing.T) {
	passBDF := findPCIByMAC(t, lab.NICPairPassMAC)
	peer := netdevByMAC(t, lab.NICPairPeerMAC)
	bind(t, passBDF, "vfio-pci")
	// A cleanup, not a defer: it must run after the vios' cleanups have
	// killed them, since unbinding waits for the device's last user.
	t.Cleanup(func() { bind(t, passBDF, "") })
	group, _ := filepath.Glob("/sys/bus/pci/devices/" + passBDF + "/iommu_group/devices/*")
	t.Logf("the NIC to pass through: %s (IOMMU group devices %v); L1's end of its wire: %s", passBDF, group, peer)
	foNetwork(t, peer)
	initrd, _ := labtest.Guest{Script: foGuest, Modules: []string{"virtio_pci", "virtio_net", "e1000e"}}.Build(t)
	a := labtest.Assets(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir := t.TempDir()
	con := &foConsole{changed: make(chan struct{}, 1)}
	// The vios outlive the test's deadline, so that a test that failed
	// on it can still ask them for their counters.
	src := startFOVio(t, context.Background(), dir, "a", con)
	dst := startFOVio(t, context.Background(), dir, "b", con)
	defer func() {
		if t.Failed() {
			t.Logf("guest console (both vios):\n%s", con.dump())
			foDiagnose(t, peer, src, dst)
		}
	}()
	src.put(t, ctx, "vm.create", `{
	  "payload": {"kernel": "`+a.Kernel+`", "initramfs": "`+initrd+`", "cmdline": "console=ttyS0 panic=-1 quiet"},
	  "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
	  "memory": {"size": `+strconv.Itoa(guestRAM)+`},
	  "net": [{"id": "sb", "tap": "`+foTap+`", "mac": "`+lab.NICPairPassMAC+`", "standby": true}],
	  "devices": [{"id": "vf0", "path": "/sys/bus/pci/devices/`+passBDF+`", "failover": "sb"}],
	  "serial": {"mode": "Tty"}, "console": {"mode": "Off"}
	}`)
	src.put(t, ctx, "vm.boot", "")

	// The guest pairs its two NICs under net_failover.
	con.wait(t, ctx, "the guest's failover device", func() bool { return con.tags["FOREADY"] != nil })
	t.Logf("guest: net_failover device %s; slaves %s; modules %s", con.tag("FOMASTER"), con.tag("FOSLAVES"), con.tag("FOMOD"))
	if sl := con.tag("FOSLAVES"); !strings.Contains(sl, ":virtio_net") || !strings.Contains(sl, ":e1000e") {
		t.Fatalf("the failover device's slaves are %q, want the virtio-net standby and the e1000e primary", sl)
	}
	if !strings.Contains(con.tag("FOMOD"), "net_failover") {
		t.Fatalf("net_failover is not loaded in the guest: %q", con.tag("FOMOD"))
	}

	s := startStream(t, ctx, net.JoinHostPort(foGuestIP, strconv.Itoa(foPort)))
	paths := func() foPaths { return readPaths(t, peer) }
	tl := startTimeline(peer, con)
	defer func() {
		t.Logf("timeline (s since the stream began; L1's bytes out each path, where L1's bridge sends the guest's MAC, the guest's counters):\n%s", tl.stop())
	}()

	// Phase 1: the primary carries the stream.
	p0, g0 := paths(), con.latest()
	// Three phases' worth: the pass-through NIC must keep it up, not
	// just start it.
	g1 := con.waitStat(t, ctx, "the stream over the primary", func(st foStat) bool { return st.primary != "-" && st.rx >= g0.rx+3*foPhase })
	p1 := paths()
	t.Logf("phase 1 (primary %s): the guest received %d bytes; L1 sent %d over the e1000 wire, %d over the TAP", g1.primary, g1.rx-g0.rx, p1.wire-p0.wire, p1.tap-p0.tap)
	wantWire(t, "phase 1 (primary plugged)", p1.wire-p0.wire, p1.tap-p0.tap)

	// Phase 2: the migration. The source unplugs the primary before it
	// migrates: the stream goes on over the standby meanwhile.
	sock := filepath.Join(dir, "mig.sock")
	received := make(chan error, 1)
	go func() {
		_, err := dst.cl.Do(ctx, http.MethodPut, "vm.receive-migration", []byte(`{"receiver_url": "unix:`+sock+`"}`))
		received <- err
	}()
	dst.waitEvent(t, ctx, "receiving-migration")
	mark := con.mark()
	p2 := paths()
	start := time.Now()
	if _, err := src.cl.Do(ctx, http.MethodPut, "vm.send-migration", []byte(`{"destination_url": "unix:`+sock+`"}`)); err != nil {
		t.Fatalf("vm.send-migration: %v", err)
	}
	if err := <-received; err != nil {
		t.Fatalf("vm.receive-migration: %v", err)
	}
	p3 := paths()
	t.Logf("migration took %v; meanwhile L1 sent %d bytes over the e1000 wire, %d over the TAP", time.Since(start).Round(100*time.Millisecond), p3.wire-p2.wire, p3.tap-p2.tap)
	for _, e := range src.events(t) {
		if e.Event == "device-removed" || e.Event == "migrated" {
			t.Logf("source event %s %v", e.Event, e.Properties)
		}
	}

	// Phase 3: the destination plugged the e1000e in again; the guest
	// enslaves it and the stream goes over it.
	g3 := con.waitStat(t, ctx, "the guest's primary plugged on the destination", func(st foStat) bool { return st.primary != "-" && con.since(mark, "-") })
	standby := con.standbyRun(mark)
	t.Logf("phase 2 (no primary): %d reports, the guest received %d bytes over the standby meanwhile", standby.reports, standby.rx)
	if standby.reports < 2 || standby.rx < foStandby {
		t.Errorf("without its primary the guest received %d bytes in %d reports, want at least %d: the stream did not go on over the standby", standby.rx, standby.reports, foStandby)
	}
	if p3.tap-p2.tap < foStandby {
		t.Errorf("L1 sent %d bytes over the TAP during the migration, want at least %d", p3.tap-p2.tap, foStandby)
	}
	p4 := paths()
	g4 := con.waitStat(t, ctx, "the stream over the plugged primary", func(st foStat) bool { return st.primary != "-" && st.rx >= g3.rx+foPhase })
	p5 := paths()
	t.Logf("phase 3 (primary %s on the destination): the guest received %d bytes; L1 sent %d over the e1000 wire, %d over the TAP",
		g4.primary, g4.rx-g3.rx, p5.wire-p4.wire, p5.tap-p4.tap)
	wantWire(t, "phase 3 (primary plugged on the destination)", p5.wire-p4.wire, p5.tap-p4.tap)
	// Phase 4: the re-plugged primary keeps it up.
	g5 := con.waitStat(t, ctx, "the stream going on over the plugged primary", func(st foStat) bool { return st.primary != "-" && st.rx >= g4.rx+foPhase })
	p6 := paths()
	t.Logf("phase 4 (primary %s, interrupts %s): the guest received %d bytes; L1 sent %d over the e1000 wire, %d over the TAP", g5.primary, g5.irqs, g5.rx-g4.rx, p6.wire-p5.wire, p6.tap-p5.tap)
	wantWire(t, "phase 4 (primary plugged on the destination, later)", p6.wire-p5.wire, p6.tap-p5.tap)
	added := false
	for _, e := range dst.events(t) {
		added = added || e.Event == "device-added" && e.Properties["id"] == "vf0" && e.Properties["reason"] == "migration"
	}
	if !added {
		t.Errorf("the destination published no device-added event for vf0 after the migration: %v", dst.events(t))
	}
	// The guest's own count: e1000e updates its netdev counters from its
	// watchdog, every 2 s, so phase 3's bytes show on the primary only by
	// the end of phase 4.
	if g5.primary == g3.primary && g5.prx-g3.prx < g4.rx-g3.rx {
		t.Errorf("the guest's primary %s counted %d bytes received by the end of phase 4, fewer than phase 3's %d", g5.primary, g5.prx-g3.prx, g4.rx-g3.rx)
	}
	var info struct {
		State  string
		Config struct {
			Devices []struct{ ID, Path, Failover string }
		}
	}
	b, err := dst.cl.Do(ctx, http.MethodGet, "vm.info", nil)
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(b, &info)
	if info.State != "Running" || len(info.Config.Devices) != 1 || info.Config.Devices[0].Path != "/sys/bus/pci/devices/"+passBDF {
		t.Errorf("the destination's VM: %s", b)
	}

	// The stream ends; the guest hashes what it received.
	sent, sum := s.finish(t)
	t.Logf("L1 sent %d bytes in all; the guest had %d when the stream ended", sent, con.latest().rx)
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer wcancel()
	con.wait(t, wctx, "the guest's hash of the stream", func() bool { return con.tags["FODONE"] != nil })
	f := strings.Fields(con.tag("FODONE"))
	if len(f) != 2 || f[0] != sum || f[1] != strconv.FormatInt(sent, 10) {
		t.Fatalf("the guest received %q (sha256, bytes), L1 sent %s %d", con.tag("FODONE"), sum, sent)
	}
	t.Logf("FAILOVER: %d bytes from L1 arrived whole (sha256 %s…) through unplug, migration and re-plug", sent, sum[:16])
}

// wantWire checks that the primary's path, the wire, carried most of a
// phase's bytes (a few go over the TAP: broadcasts reach both paths).
func wantWire(t *testing.T, phase string, wire, tap uint64) {
	t.Helper()
	if total := wire + tap; total < foPhase || wire*10 < total*8 {
		t.Errorf("%s: L1 sent %d bytes over the wire and %d over the TAP; want most of at least %d over the wire", phase, wire, tap, foPhase)
	}
}

// foNetwork makes the bridge with L1's end of the wire and the TAP.
func foNetwork(t *testing.T, peer string) {
	t.Helper()
	for _, c := range [][]string{
		{"ip", "link", "add", foBridge, "type", "bridge"},
		{"ip", "tuntap", "add", foTap, "mode", "tap"},
		{"ip", "link", "set", peer, "master", foBridge},
		{"ip", "link", "set", foTap, "master", foBridge},
		{"ip", "addr", "add", foHostIP + "/24", "dev", foBridge},
		{"ip", "link", "set", peer, "up"},
		{"ip", "link", "set", foTap, "up"},
		{"ip", "link", "set", foBridge, "up"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(c, " "), err, out)
		}
		if c[2] == "add" && c[1] == "link" {
			t.Cleanup(func() { exec.Command("ip", "link", "del", foBridge).Run() })
		}
		if c[1] == "tuntap" {
			t.Cleanup(func() { exec.Command("ip", "link", "del", foTap).Run() })
		}
	}
}

// timeline samples, once a second, L1's counters of both paths, the
// bridge port it sends the guest's MAC to and the guest's last report:
// a measurement for the log, which no check waits on.
type timeline struct {
	quit chan struct{}
	done chan string
}

func startTimeline(peer string, con *foConsole) *timeline {
	tl := &timeline{quit: make(chan struct{}), done: make(chan string, 1)}
	go func() {
		var b strings.Builder
		start := time.Now()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			w, _ := os.ReadFile("/sys/class/net/" + peer + "/statistics/tx_bytes")
			tp, _ := os.ReadFile("/sys/class/net/" + foTap + "/statistics/tx_bytes")
			port := "-"
			if out, err := exec.Command("bridge", "fdb", "show", "br", foBridge).Output(); err == nil {
				for _, l := range strings.Split(string(out), "\n") {
					if f := strings.Fields(l); len(f) >= 3 && f[0] == lab.NICPairPassMAC && f[1] == "dev" {
						port = f[2]
					}
				}
			}
			st := con.latest()
			fmt.Fprintf(&b, "  %4.0f wire=%s tap=%s fdb=%s | primary=%s prx=%d srx=%d rx=%d irqs=%s\n", time.Since(start).Seconds(),
				strings.TrimSpace(string(w)), strings.TrimSpace(string(tp)), port, st.primary, st.prx, st.srx, st.rx, st.irqs)
			select {
			case <-tl.quit:
				tl.done <- b.String()
				return
			case <-tick.C:
			}
		}
	}()
	return tl
}

func (tl *timeline) stop() string {
	close(tl.quit)
	return <-tl.done
}

// foPaths are L1's transmit counters of the two paths to the guest.
type foPaths struct{ wire, tap uint64 }

func readPaths(t *testing.T, peer string) foPaths {
	t.Helper()
	return foPaths{wire: txBytes(t, peer), tap: txBytes(t, foTap)}
}

func txBytes(t *testing.T, dev string) uint64 {
	t.Helper()
	b, err := os.ReadFile("/sys/class/net/" + dev + "/statistics/tx_bytes")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// findPCIByMAC returns the PCI address of the lab's NIC to pass through.
// It has no driver in L1, so no netdev carries its MAC: it is the
// e1000e (8086:10d3) of the NIC pair.
func findPCIByMAC(t *testing.T, mac string) string {
	t.Helper()
	devs, _ := filepath.Glob("/sys/bus/pci/devices/*")
	for _, d := range devs {
		v, _ := os.ReadFile(filepath.Join(d, "vendor"))
		id, _ := os.ReadFile(filepath.Join(d, "device"))
		if strings.TrimSpace(string(v)) == "0x8086" && strings.TrimSpace(string(id)) == "0x10d3" {
			return filepath.Base(d)
		}
	}
	t.Skipf("no e1000e to pass through here (the NIC pair with MAC %s): the lab gives one with lab.Config.NICPair (vio-lab exec --nic-pair)", mac)
	return ""
}

// netdevByMAC returns the name of L1's interface with the MAC address.
func netdevByMAC(t *testing.T, mac string) string {
	t.Helper()
	devs, _ := filepath.Glob("/sys/class/net/*")
	for _, d := range devs {
		if b, err := os.ReadFile(filepath.Join(d, "address")); err == nil && strings.TrimSpace(string(b)) == mac {
			return filepath.Base(d)
		}
	}
	t.Skipf("no interface with MAC %s here: the lab's NIC pair gives L1 one (lab.Config.NICPair)", mac)
	return ""
}

// stream is L1's side of the TCP stream: pseudo-random bytes at foRate,
// hashed as they go.
type stream struct {
	conn net.Conn
	stop chan struct{}
	done chan error
	sent int64
	sum  hash.Hash
}

func startStream(t *testing.T, ctx context.Context, addr string) *stream {
	t.Helper()
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp4", addr)
	if err != nil {
		t.Fatalf("connecting to the guest's nc: %v", err)
	}
	s := &stream{conn: conn, stop: make(chan struct{}), done: make(chan error, 1), sum: sha256.New()}
	t.Cleanup(func() { conn.Close() })
	go s.run()
	return s
}

func (s *stream) run() {
	rnd := rand.NewChaCha8([32]byte{'v', 'i', 'o', 'f', 'o'})
	buf := make([]byte, 8<<10)
	start := time.Now()
	for {
		select {
		case <-s.stop:
			s.done <- nil
			return
		default:
		}
		rnd.Read(buf)
		// A stall longer than this is a broken stream, not a slow lab:
		// the migration's downtime is seconds.
		s.conn.SetWriteDeadline(time.Now().Add(2 * time.Minute))
		if _, err := s.conn.Write(buf); err != nil {
			s.done <- err
			return
		}
		s.sum.Write(buf)
		s.sent += int64(len(buf))
		// Pacing, not synchronization: the stream's average rate.
		if ahead := time.Duration(s.sent)*time.Second/foRate - time.Since(start); ahead > 0 {
			time.Sleep(ahead)
		}
	}
}

// finish stops the stream, closes it and returns what was sent.
func (s *stream) finish(t *testing.T) (int64, string) {
	t.Helper()
	close(s.stop)
	if err := <-s.done; err != nil {
		t.Fatalf("the stream to the guest broke after %d bytes: %v", s.sent, err)
	}
	if err := s.conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	return s.sent, hex.EncodeToString(s.sum.Sum(nil))
}

// foStat is one FOSTAT report of the guest.
type foStat struct {
	primary      string
	prx, srx, rx uint64
	irqs         string // the primary's vectors and their counts
	seq          int
}

// foConsole collects the guest's reports from both vios' consoles.
type foConsole struct {
	mu      sync.Mutex
	lines   []string
	tags    map[string][]string // first value of each tagged line
	stats   []foStat
	changed chan struct{} // a token after each new line
}

func (c *foConsole) feed(name string, r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		c.mu.Lock()
		c.lines = append(c.lines, name+": "+line)
		if len(c.lines) > 4000 {
			c.lines = c.lines[1:]
		}
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "FO") {
			if c.tags == nil {
				c.tags = map[string][]string{}
			}
			if _, ok := c.tags[f[0]]; !ok {
				c.tags[f[0]] = f[1:]
			}
			if f[0] == "FOSTAT" {
				st := foStat{seq: len(c.stats)}
				for _, kv := range f[1:] {
					k, v, _ := strings.Cut(kv, "=")
					n, _ := strconv.ParseUint(v, 10, 64)
					switch k {
					case "primary":
						st.primary = v
					case "prx":
						st.prx = n
					case "srx":
						st.srx = n
					case "rx":
						st.rx = n
					case "pirq":
						st.irqs = v
					}
				}
				c.stats = append(c.stats, st)
			}
		}
		c.mu.Unlock()
		select {
		case c.changed <- struct{}{}:
		default:
		}
	}
}

func (c *foConsole) tag(k string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.tags[k], " ")
}

// dump is what the consoles said: every line but the periodic reports,
// and the last of those.
func (c *foConsole) dump() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	stats := 0
	for i := len(c.lines) - 1; i >= 0; i-- {
		if strings.Contains(c.lines[i], ": FOSTAT ") {
			if stats++; stats > 40 {
				continue
			}
		}
		out = append(out, c.lines[i])
	}
	slices.Reverse(out)
	return strings.Join(out, "\n")
}

// foDiagnose logs what L1 and the vios say of the two paths, for a test
// that failed.
func foDiagnose(t *testing.T, peer string, vios ...*foVio) {
	for _, dev := range []string{peer, foTap} {
		var fs []string
		for _, f := range []string{"tx_bytes", "tx_packets", "tx_errors", "tx_dropped", "rx_bytes", "rx_packets", "rx_dropped"} {
			b, _ := os.ReadFile("/sys/class/net/" + dev + "/statistics/" + f)
			fs = append(fs, f+"="+strings.TrimSpace(string(b)))
		}
		t.Logf("L1 %s: %s", dev, strings.Join(fs, " "))
	}
	for _, c := range [][]string{{"bridge", "fdb", "show", "br", foBridge}, {"sh", "-c", "dmesg | tail -30"}} {
		out, err := exec.Command(c[0], c[1:]...).CombinedOutput()
		t.Logf("L1 %s (%v):\n%s", strings.Join(c, " "), err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, v := range vios {
		if b, err := v.cl.Do(ctx, http.MethodGet, "vm.counters", nil); err == nil {
			t.Logf("vm.counters of %s: %s", v.ev, b)
		}
	}
}

// latest is the last FOSTAT report (zero before the first).
func (c *foConsole) latest() foStat {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.stats) == 0 {
		return foStat{}
	}
	return c.stats[len(c.stats)-1]
}

// mark is the number of reports so far.
func (c *foConsole) mark() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.stats)
}

// since says whether a report after mark named primary p.
func (c *foConsole) since(mark int, p string) bool {
	for _, st := range c.stats[mark:] {
		if st.primary == p {
			return true
		}
	}
	return false
}

// standbyRun is what the reports after mark say of the time without a
// primary: how many there were, and the bytes the stream gained
// between the first and the last.
func (c *foConsole) standbyRun(mark int) (r struct {
	reports int
	rx      uint64
}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var first, last *foStat
	for i := range c.stats[mark:] {
		st := &c.stats[mark+i]
		if st.primary != "-" {
			if first != nil {
				break
			}
			continue
		}
		if first == nil {
			first = st
		}
		last = st
		r.reports++
	}
	if first != nil {
		r.rx = last.rx - first.rx
	}
	return r
}

// foStep bounds each wait for the guest: a step takes seconds, the
// slowest (the boot) about a minute in the lab.
const foStep = 4 * time.Minute

// wait waits until cond (called with c.mu held) holds, at most foStep.
func (c *foConsole) wait(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, foStep)
	defer cancel()
	for {
		c.mu.Lock()
		ok := cond()
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-c.changed:
		case <-ctx.Done():
			t.Fatalf("%s: the guest never said so before the deadline", what)
		}
	}
}

// waitStat waits for a report that satisfies cond and returns it.
func (c *foConsole) waitStat(t *testing.T, ctx context.Context, what string, cond func(foStat) bool) foStat {
	t.Helper()
	var got foStat
	c.wait(t, ctx, what, func() bool {
		if len(c.stats) == 0 {
			return false
		}
		got = c.stats[len(c.stats)-1]
		return cond(got)
	})
	return got
}

// foVio is a vio process serving the API, its console fed to the
// foConsole and its events to a file.
type foVio struct {
	cmd *exec.Cmd
	cl  *api.Client
	ev  string
}

func startFOVio(t *testing.T, ctx context.Context, dir, name string, con *foConsole) *foVio {
	t.Helper()
	sock, ev := filepath.Join(dir, name+".sock"), filepath.Join(dir, name+"-events.json")
	v := &foVio{cmd: exec.CommandContext(ctx, vioBin, "--api-socket", sock, "--event-monitor", "path="+ev, "-v"), ev: ev}
	out, err := v.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	v.cmd.Stderr = os.Stderr
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.cmd.Process.Kill(); v.cmd.Wait() })
	go con.feed(name, out)
	v.cl = api.NewClient(sock)
	t.Cleanup(v.cl.Close)
	for {
		if _, err := v.cl.Do(ctx, http.MethodGet, "vmm.ping", nil); err == nil {
			return v
		}
		if v.cmd.ProcessState != nil || ctx.Err() != nil {
			t.Fatalf("vio %s did not come up on its API socket", name)
		}
		time.Sleep(20 * time.Millisecond) // polling a socket that is not there yet, as Kata does
	}
}

func (v *foVio) put(t *testing.T, ctx context.Context, endpoint, body string) {
	t.Helper()
	var b []byte
	if body != "" {
		b = []byte(body)
	}
	if _, err := v.cl.Do(ctx, http.MethodPut, endpoint, b); err != nil {
		t.Fatalf("%s: %v", endpoint, err)
	}
}

type foEvent struct {
	Event      string            `json:"event"`
	Properties map[string]string `json:"properties"`
}

// events reads the vio's event file.
func (v *foVio) events(t *testing.T) []foEvent {
	t.Helper()
	b, err := os.ReadFile(v.ev)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []foEvent
	d := json.NewDecoder(strings.NewReader(string(b)))
	for {
		var e foEvent
		if d.Decode(&e) != nil {
			return out
		}
		out = append(out, e)
	}
}

// waitEvent waits until the vio's event file has the event.
func (v *foVio) waitEvent(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	for {
		for _, e := range v.events(t) {
			if e.Event == name {
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("no %s event before the deadline", name)
		}
		time.Sleep(50 * time.Millisecond) // polling the event file, as e2e's hops do
	}
}
