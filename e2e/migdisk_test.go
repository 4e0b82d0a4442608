package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// migDiskHops is how many TCP migrations TestMigrationDisk makes in the
// suite (make soak-migration: 20, see migrationHops).
const migDiskHops = 4

// migDiskPattern is what the guest writes at migDiskPatternOff of both
// data disks before the first hop, one line after another, for the host
// to read back at the end.
const (
	migDiskPattern    = "vio handed this disk over"
	migDiskPatternOff = 48 << 20
	migDiskPatternLen = 1 << 20
	migDiskFioMiB     = 8 // fio's region at the start of each data disk
)

// The guest's NIC is on a TAP of L1 (persistent, as ip tuntap makes it,
// so that it outlives each source's descriptor), where a server of the
// test reads the numbered lines the guest writes on one TCP connection.
const (
	migNetTap     = "viomig0"
	migNetHostIP  = "10.0.77.1"
	migNetGuestIP = "10.0.77.2"
	migNetPort    = 5077
	// migNetAfter is how many lines must arrive after the last hop.
	migNetAfter = 20
)

// migDiskPrelude opens a TCP connection to the host's server and writes
// numbered lines on it, about 10 a second, for as long as the guest runs
// (busybox nc: a connection that breaks is not opened again).
var migDiskPrelude = `ip link set eth0 up && ip addr add ` + migNetGuestIP + `/24 dev eth0
( i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done ) | nc ` + migNetHostIP + ` ` + strconv.Itoa(migNetPort) + ` &
`

// migDiskGuest is migDiskPrelude, then fioMigGuest on both data disks at
// once (vda raw, vdb qcow2), the mailbox on vdc and the result disk vdd.
var migDiskGuest = fioMigGuest(migDiskPrelude,
	[]fioMigDisk{{"/dev/vda", "raw"}, {"/dev/vdb", "qcow2"}}, "--ioengine=psync", "/dev/vdc", "/dev/vdd")

var migDiskFact = regexp.MustCompile(`VIO-DISK (\w+)=(\S*)`)

// TestMigrationDisk migrates a guest that writes its disks while it
// runs: fio --verify on a writable raw disk and a writable qcow2 disk at
// once, round after round, while the VM goes back and forth migDiskHops
// times over TCP between two vio processes, each hop handing the images
// over at the switchover (docs/migration.md, "Disks and other host
// resources"), and the TAP of its virtio NIC with them: meanwhile the
// guest writes numbered lines on one TCP connection to a server of the
// test. Every fio round must pass and the kernel report no I/O error,
// every hop (through migrateHops) must keep the guest going with RAM
// copied; the host must see one connection, every number once and in
// order, and lines after the last hop; at the end qemu-img check passes
// on the qcow2 image, the pattern the guest wrote before the first hop
// reads back from both images on the host, and the first 8 MiB of each
// (fio's region) hash on the host as the guest read them last.
func TestMigrationDisk(t *testing.T) {
	labRetry(t, func(t *testing.T, reset *labReset) {
		a := labtest.Assets(t)
		dir := t.TempDir()
		rawImg, qcowImg := filepath.Join(dir, "data.raw"), filepath.Join(dir, "data.qcow2")
		// The raw disk is not on shared storage: each hop copies it
		// into the destination's own image, b's at rawCopy, a's back at
		// rawImg (no longer used once a's VM has left).
		rawCopy := filepath.Join(dir, "data-b.raw")
		box, result := filepath.Join(dir, "box.img"), filepath.Join(dir, "result.img")
		run(t, "truncate", "-s", "64M", rawImg)
		run(t, "truncate", "-s", "64M", rawCopy)
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", qcowImg, "64M")
		run(t, "truncate", "-s", "1M", box)
		run(t, "truncate", "-s", "1M", result)
		migNetTAP(t)
		stream := serveNetStream(t, fmt.Sprintf("%s:%d", migNetHostIP, migNetPort))
		initrd, tools := labtest.Guest{
			Script:   migDiskGuest,
			Modules:  []string{"virtio_pci", "virtio_blk", "virtio_net"},
			Programs: []string{"/usr/bin/fio"},
		}.Build(t)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()

		hops := migrationHops(t, migDiskHops)
		vios := [2]*hopVio{startHopVio(t, ctx, dir, "a"), startHopVio(t, ctx, dir, "b")}
		put(t, ctx, vios[0].cl, "vm.create", `{
	  "payload": {"kernel": "`+a.Kernel+`", "initramfs": "`+initrd+`", "cmdline": "console=ttyS0 panic=-1 quiet"},
	  "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
	  "memory": {"size": `+strconv.Itoa(guestMemMiB<<20)+`},
	  "disks": [
	    {"id": "raw", "path": "`+rawImg+`", "image_type": "Raw"},
	    {"id": "qcow2", "path": "`+qcowImg+`", "image_type": "Qcow2"},
	    {"id": "box", "path": "`+box+`", "image_type": "Raw", "readonly": true},
	    {"id": "result", "path": "`+result+`", "image_type": "Raw"},
	    {"id": "tools", "path": "`+tools+`", "image_type": "Raw", "readonly": true}
	  ],
	  "net": [{"id": "n0", "tap": "`+migNetTap+`", "mac": "52:54:00:12:34:77"}],
	  "serial": {"mode": "Tty"}, "console": {"mode": "Off"}
	}`)
		put(t, ctx, vios[0].cl, "vm.boot", "")
		// A few reports: the guest runs, fio with it.
		var last migLine
		var baseGap time.Duration
		for i := 0; i < 4; i++ {
			last = vios[0].p.next(t, ctx, "a")
			if i > 0 {
				baseGap = max(baseGap, last.gap)
			}
		}
		// The guest's TCP stream runs before the first hop.
		stream.waitLines(t, ctx, 10, "before the first hop")
		t.Logf("guest on a: pass %d, fio running on both disks, %d lines on its TCP stream; longest clock gap between reports: %v", last.pass, stream.count(), baseGap)
		var afterHop int                // the stream's lines when the last hop's migration was checked
		rawAt := func(hop int) string { // where the raw disk is after hop
			if hop%2 == 1 {
				return rawCopy
			}
			return rawImg
		}
		figs := migrateHops(t, ctx, vios, last, hopPlan{
			reset:   reset,
			hops:    hops,
			url:     func(int) string { return "tcp:127.0.0.1:0" },
			send:    func(int) string { return `, "copy_disks": ["raw"]` },
			receive: func(hop int) string { return `, "disk_paths": {"raw": "` + rawAt(hop) + `"}` },
			check: func(m map[string]string) string {
				if m["reason"] == "local" || m["data_pages"] == "0" {
					return "no RAM was copied"
				}
				if n, _ := strconv.ParseInt(m["disk_bytes"], 10, 64); n < 64<<20 {
					return fmt.Sprintf("the raw disk was not copied whole (disk_bytes %q, want 64 MiB)", m["disk_bytes"])
				}
				if why := stream.check(); why != "" {
					return "the guest's TCP stream: " + why
				}
				afterHop = stream.count()
				return ""
			},
		})
		t.Logf("MIGRATION with disks over TCP: %s", hopSummary(figs, baseGap))
		// The stream goes on after the last hop: the destination's NIC has
		// the TAP, and TCP retransmitted what the switchovers dropped.
		stream.waitLines(t, ctx, afterHop+migNetAfter, "after the last hop")
		if why := stream.check(); why != "" {
			t.Fatalf("the guest's TCP stream: %s", why)
		}
		stream.mu.Lock()
		t.Logf("the guest's TCP stream: one connection, %d lines in order (%d after the last hop was checked), longest silence between two lines %v",
			stream.lines, stream.lines-afterHop, stream.maxGap.Round(time.Millisecond))
		stream.mu.Unlock()

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
		final := vios[hops%2]
		for vmState(t, ctx, final.cl) != "Shutdown" {
			select {
			case <-ctx.Done():
				t.Fatalf("the guest on %s did not finish and power off after GO", final.name)
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
		if facts["complete"] != "1" {
			t.Fatalf("the guest's account is incomplete: %q", bytes.TrimRight(acct, "\x00"))
		}
		if facts["fails"] != "0" || facts["ioerr"] != "0" || facts["fioerr"] != "err=0," {
			t.Fatalf("the guest saw an error: %v", facts)
		}
		if facts["go"] != "1" {
			t.Fatalf("the guest stopped without the host's GO (after %s rounds): %v", facts["rounds"], facts)
		}
		if n, _ := strconv.Atoi(facts["rounds"]); n < 1 {
			t.Fatalf("no fio round finished: %v", facts)
		}

		// The host's view of the images, after the last vio closed them.
		run(t, "qemu-img", "check", "-q", "-f", "qcow2", qcowImg)
		asRaw := filepath.Join(dir, "data-qcow2.raw")
		run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcowImg, asRaw)
		want := []byte(strings.Repeat(migDiskPattern+"\n", migDiskPatternLen/len(migDiskPattern)+1)[:migDiskPatternLen])
		for _, img := range []struct{ name, path, sum string }{
			{"raw", rawAt(hops), facts["sumraw"]},
			{"qcow2", asRaw, facts["sumqcow2"]},
		} {
			b, err := os.ReadFile(img.path)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) < migDiskPatternOff+migDiskPatternLen {
				t.Fatalf("the %s image is %d bytes", img.name, len(b))
			}
			if !bytes.Equal(b[migDiskPatternOff:migDiskPatternOff+migDiskPatternLen], want) {
				t.Errorf("the %s image does not hold the pattern the guest wrote before the first hop", img.name)
			}
			sum := sha256.Sum256(b[:migDiskFioMiB<<20])
			if got := hex.EncodeToString(sum[:]); got != img.sum {
				t.Errorf("the %s image's first %d MiB hash to %s on the host, the guest read %s", img.name, migDiskFioMiB, got, img.sum)
			}
		}
	})
}

// netStream is the host's end of the guest's TCP stream: it accepts
// connections and checks the numbered lines they carry (1, 2, 3, ...: a
// number out of turn is a line lost or repeated).
type netStream struct {
	mu      sync.Mutex
	conns   int
	lines   int
	last    int
	bad     []string // the first faults
	lastAt  time.Time
	maxGap  time.Duration // the longest silence between two lines
	open    []net.Conn
	readErr error
}

// serveNetStream listens on addr until the test ends.
func serveNetStream(t *testing.T, addr string) *netStream {
	t.Helper()
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &netStream{}
	t.Cleanup(func() {
		l.Close()
		s.mu.Lock()
		for _, c := range s.open {
			c.Close()
		}
		s.mu.Unlock()
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns++
			s.open = append(s.open, c)
			s.mu.Unlock()
			go s.read(c)
		}
	}()
	return s
}

func (s *netStream) read(c net.Conn) {
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		now := time.Now()
		n, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
		s.mu.Lock()
		switch {
		case err != nil:
			s.fault(fmt.Sprintf("line %d is %q", s.lines+1, sc.Text()))
		case n != s.last+1:
			s.fault(fmt.Sprintf("%d after %d", n, s.last))
		}
		if err == nil {
			s.last = n
		}
		if s.lines > 0 {
			s.maxGap = max(s.maxGap, now.Sub(s.lastAt))
		}
		s.lines++
		s.lastAt = now
		s.mu.Unlock()
	}
	s.mu.Lock()
	if s.readErr == nil {
		s.readErr = sc.Err()
	}
	s.mu.Unlock()
}

// fault records a fault; s.mu is held.
func (s *netStream) fault(f string) {
	if len(s.bad) < 10 {
		s.bad = append(s.bad, f)
	}
}

// count returns the lines received so far.
func (s *netStream) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lines
}

// check says what is wrong with the stream so far, or "".
func (s *netStream) check() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.conns != 1:
		return fmt.Sprintf("%d connections, want 1 (the guest's nc does not reconnect: a second one means the first broke)", s.conns)
	case len(s.bad) > 0:
		return "numbers out of turn (lost or repeated lines): " + strings.Join(s.bad, ", ")
	case s.readErr != nil:
		return "reading the stream: " + s.readErr.Error()
	}
	return ""
}

// waitLines waits until the stream has carried at least n lines.
func (s *netStream) waitLines(t *testing.T, ctx context.Context, n int, what string) {
	t.Helper()
	for s.count() < n {
		if why := s.check(); why != "" {
			t.Fatalf("the guest's TCP stream, %s: %s", what, why)
		}
		select {
		case <-ctx.Done():
			s.mu.Lock()
			defer s.mu.Unlock()
			t.Fatalf("the guest's TCP stream, %s: %d lines, want %d (connections: %d, last line at %v)", what, s.lines, n, s.conns, s.lastAt.Format(time.TimeOnly))
		case <-time.After(100 * time.Millisecond): // polling the count, as vmState is polled
		}
	}
}

// migNetTAP makes the guest's TAP in L1 with the host's address, and
// deletes it when the test ends.
func migNetTAP(t *testing.T) {
	t.Helper()
	run(t, "ip", "tuntap", "add", migNetTap, "mode", "tap")
	t.Cleanup(func() { exec.Command("ip", "link", "del", migNetTap).Run() })
	run(t, "ip", "addr", "add", migNetHostIP+"/24", "dev", migNetTap)
	run(t, "ip", "link", "set", migNetTap, "up")
}
