package vmm

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/config"
	virtionet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/nettest"
)

func TestUserNetConfig(t *testing.T) {
	c, err := userNetConfig(&config.UserNet{Net: "10.9.0.0/24", HostFwd: []string{"tcp:127.0.0.1:2222-:22", "udp::5353-:53"}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Prefix.String() != "10.9.0.0/24" || len(c.HostFwds) != 2 || c.HostFwds[0].Host.String() != "127.0.0.1:2222" || !c.HostFwds[1].UDP {
		t.Fatalf("%+v", c)
	}
	for in, want := range map[string]string{
		"192.0.2.53": "192.0.2.53:53", "192.0.2.53:5353": "192.0.2.53:5353",
		"2001:db8::53": "[2001:db8::53]:53", "[2001:db8::53]:54": "[2001:db8::53]:54",
	} {
		c, err := userNetConfig(&config.UserNet{DNSUpstream: in})
		if err != nil || c.DNSUpstream.String() != want {
			t.Errorf("dns_upstream=%s: %v, %v; want %s", in, c.DNSUpstream, err, want)
		}
	}
	for _, bad := range []config.UserNet{{Net: "10.0.2.0"}, {HostFwd: []string{"tcp:2222:22"}}, {DNSUpstream: "dns.example"}, {DNSUpstream: "192.0.2.53:0"}, {DNSUpstream: "192.0.2.53:99999"}} {
		if _, err := userNetConfig(&bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	// A user-mode network opens without privileges and closes with the VM.
	var v VM
	be, err := single(v.netBackends(config.Net{User: &config.UserNet{HostFwd: []string{"tcp:127.0.0.1:0-:22"}}}))
	if err != nil {
		t.Fatal(err)
	}
	if len(v.closers) != 1 || v.closers[0] != be {
		t.Fatalf("closers %v", v.closers)
	}
	be.Close()
	if _, err := single(v.netBackends(config.Net{User: &config.UserNet{Net: "10.0.0.0/30"}})); err == nil || !strings.Contains(err.Error(), "prefix length") {
		t.Errorf("tiny network: %v", err)
	}
}

// single is the one back-end of a NIC with one queue pair.
func single(bes []netdev.Backend, err error) (netdev.Backend, error) {
	if err != nil {
		return nil, err
	}
	if len(bes) != 1 {
		return nil, fmt.Errorf("%d back-ends for one queue pair", len(bes))
	}
	return bes[0], nil
}

// TestTapQueues: a NIC with 4 queue pairs on a TAP named by the config
// gets 4 back-ends, the queues of one multi-queue TAP (which the kernel
// then has 4 of), each closed with the VM; a TAP that exists as a
// single-queue one is refused in a sentence that says how to make it
// multi-queue.
func TestTapQueues(t *testing.T) {
	ns := nettest.Netns(t, "viovmmq")
	var v VM
	var bes []netdev.Backend
	var err, singleErr error
	nettest.InNetns(t, ns, func() {
		bes, err = v.netBackends(config.Net{Tap: "mq0", NumQueues: 8})
		if err != nil {
			return
		}
		if out, err := exec.Command("ip", "tuntap", "add", "sq0", "mode", "tap").CombinedOutput(); err != nil {
			singleErr = fmt.Errorf("ip tuntap add: %v: %s", err, out)
			return
		}
		var v2 VM
		_, singleErr = v2.netBackends(config.Net{Tap: "sq0", NumQueues: 4})
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(bes) != 4 || len(v.closers) != 4 {
		t.Fatalf("%d back-ends, %d closers for 4 queue pairs", len(bes), len(v.closers))
	}
	out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", "ls -d /sys/class/net/mq0/queues/rx-* | wc -l").Output()
	if err != nil || strings.TrimSpace(string(out)) != "4" {
		t.Errorf("the TAP has %q receive queues (%v), want 4", out, err)
	}
	for _, c := range v.closers {
		c.Close()
	}
	if singleErr == nil || !strings.Contains(singleErr.Error(), "multi_queue") {
		t.Errorf("4 queues on a single-queue TAP: %v", singleErr)
	}
}

// TestNICFromFDsQueues: TAP descriptors passed in (as Kata passes them)
// are one NIC's queue pairs when they are queues of one multi-queue TAP;
// descriptors of two TAPs are refused in a sentence naming both.
func TestNICFromFDsQueues(t *testing.T) {
	ns := nettest.Netns(t, "viovmfd")
	open := func(name string) int {
		t.Helper()
		fd := -1
		var err error
		nettest.InNetns(t, ns, func() {
			if fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
				return
			}
			var ifr *unix.Ifreq
			if ifr, err = unix.NewIfreq(name); err != nil {
				return
			}
			ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_MULTI_QUEUE)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	var v VM
	dev, err := v.newNICFromFDs(config.Net{TapFDs: []int{open("fdq0"), open("fdq0")}})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(dev.(*virtionet.Device).QueueStats()); n != 2 {
		t.Errorf("%d queue pairs on two queues of one TAP", n)
	}
	for _, c := range v.closers {
		c.Close()
	}
	var v2 VM
	_, err = v2.newNICFromFDs(config.Net{TapFDs: []int{open("fdq1"), open("fdq2")}})
	if err == nil || !strings.Contains(err.Error(), "queues of fdq1 and fdq2") {
		t.Errorf("descriptors of two TAPs: %v", err)
	}
	for _, c := range v2.closers {
		c.Close()
	}
}
