package config

import (
	"fmt"
	"iter"
	"strconv"
	"strings"

	"github.com/viovmm/vio/irq/coalesce"
	"github.com/viovmm/vio/virtio/ringpoll"
)

// The command line describes devices as comma-separated key=value lists,
// like Cloud Hypervisor's and QEMU's: --disk path=a.img,readonly=on.

func splitSpec(flag, spec string) (map[string]string, error) {
	kv := map[string]string{}
	for _, part := range strings.Split(spec, ",") {
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("--%s %q: %q is not key=value", flag, spec, part)
		}
		if _, dup := kv[k]; dup {
			return nil, fmt.Errorf("--%s %q: %q given twice", flag, spec, k)
		}
		kv[k] = v
	}
	return kv, nil
}

// inOrder yields kv's pairs in the order spec gives them, so that of
// several wrong keys the first is reported, and the same one on every run
// (a map's own order varies). Keys no longer in kv are skipped.
func inOrder(spec string, kv map[string]string) iter.Seq2[string, string] {
	return func(yield func(string, string) bool) {
		for _, part := range strings.Split(spec, ",") {
			k, _, _ := strings.Cut(part, "=")
			if v, ok := kv[k]; ok && part != "" {
				if !yield(k, v) {
					return
				}
			}
		}
	}
}

func parseBool(flag, key, v string) (bool, error) {
	switch v {
	case "on", "true", "yes", "1":
		return true, nil
	case "off", "false", "no", "0":
		return false, nil
	}
	return false, fmt.Errorf("--%s: %s=%q: want on or off", flag, key, v)
}

func parseInt(flag, key, v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("--%s: %s=%q: want a non-negative number", flag, key, v)
	}
	return n, nil
}

// ParseMemory parses the --memory flag as Cloud Hypervisor spells it,
// size=SIZE[,shared=on], or a bare SIZE (--memory 1G), which is the same
// as size=SIZE.
func ParseMemory(spec string) (Memory, error) {
	if !strings.Contains(spec, "=") {
		n, err := ParseSize(spec)
		if err != nil {
			return Memory{}, fmt.Errorf("--memory: %w", err)
		}
		return Memory{Size: n}, nil
	}
	kv, err := splitSpec("memory", spec)
	if err != nil {
		return Memory{}, err
	}
	var m Memory
	for k, v := range inOrder(spec, kv) {
		switch k {
		case "size":
			if m.Size, err = ParseSize(v); err != nil {
				return Memory{}, fmt.Errorf("--memory: %w", err)
			}
		case "shared":
			if m.Shared, err = parseBool("memory", k, v); err != nil {
				return Memory{}, err
			}
		default:
			return Memory{}, fmt.Errorf("--memory %q: unknown key %q (want size, shared)", spec, k)
		}
	}
	if _, ok := kv["size"]; !ok {
		return Memory{}, fmt.Errorf("--memory %q: size= is missing; write it like size=1G,shared=on", spec)
	}
	return m, nil
}

// ParseDisk parses path=FILE[,iface=virtio|ide|cdrom][,format=raw|qcow2][,backing=allow][,readonly=on][,cache=MODE][,serial=S][,num_queues=N][,queue_size=N][,id=ID]
// [,coalesce=off|adaptive|N[:DELAY]][,poll=off|adaptive[:MAX]|MICROSECONDS][,throttle=bw:RATE+ops:RATE][,rate_limit_group=G][,bw_size=N,bw_refill_time=MS,...] (Cloud Hypervisor's rate limiter keys)
// [,journal=LOG][,undo=on] (a journal node over the image, docs/journal.md).
// or vhost_user=on,socket=PATH[,num_queues=N][,queue_size=N][,id=ID] (a disk a vhost-user back-end serves; docs/vhost-user.md).
// [,vfs=IMG+IMG...] (SR-IOV virtual functions, each a virtio disk on its image; docs/sriov.md).
// [,encrypt=on,key_file=PATH|key_fd=N|key_env=NAME[,encrypt_discard=on]] (a LUKS2 image; see diskcrypt.go).
func ParseDisk(spec string) (Disk, error) {
	var d Disk
	var journalLog string
	var undo bool
	kv, err := splitSpec("disk", spec)
	if err != nil {
		return d, err
	}
	enc, err := takeCryptKeys(kv) // diskcrypt.go
	if err != nil {
		return d, err
	}
	for k, v := range inOrder(spec, kv) {
		switch k {
		case "path":
			d.Path = v
		case "iface":
			if v != DiskVirtio && v != DiskIDE && v != DiskCDROM {
				err = fmt.Errorf("--disk %q: iface %q: want virtio, ide or cdrom", spec, v)
			}
			d.Iface = v
		case "readonly":
			d.Readonly, err = parseBool("disk", k, v)
		case "direct":
			d.Direct, err = parseBool("disk", k, v)
		case "cache":
			d.Cache = v
		case "serial":
			if len(v) > 20 {
				err = fmt.Errorf("--disk: serial %q is longer than virtio-blk's 20 bytes", v)
			}
			d.Serial = v
		case "num_queues":
			d.NumQueues, err = parseInt("disk", k, v)
		case "queue_size":
			d.QueueSize, err = parseInt("disk", k, v)
		case "id":
			d.ID = v
		case "coalesce":
			if _, err = coalesce.Parse(v); err != nil {
				err = fmt.Errorf("--disk: coalesce=%s: %w", v, err)
			}
			d.Coalesce = v
		case "poll":
			if _, err = ringpoll.Parse(v); err != nil {
				err = fmt.Errorf("--disk: poll=%s: %w", v, err)
			}
			d.Poll = v
		case "format":
			if d.ImageType, err = ParseImageType(v); err != nil {
				err = fmt.Errorf("--disk: %w", err)
			}
		case "throttle":
			d.RateLimiterConfig, err = parseThrottle(v)
		case "rate_limit_group":
			d.RateLimitGroup = v
		case "bw_size", "bw_one_time_burst", "bw_refill_time", "ops_size", "ops_one_time_burst", "ops_refill_time":
			err = chBucketKey(&d, k, v)
		case "journal":
			journalLog = v
		case "undo":
			undo, err = parseBool("disk", k, v)
		case "vfs":
			for _, path := range strings.Split(v, "+") {
				if path == "" {
					err = fmt.Errorf("--disk: vfs=%q: an empty image path; write vfs=A.img+B.img", v)
					break
				}
				d.VirtualFunctions = append(d.VirtualFunctions, Disk{Path: path})
			}
		case "vhost_user":
			d.VhostUser, err = parseBool("disk", k, v)
		case "socket":
			d.VhostSocket = v
		case "backing":
			if v != "allow" {
				err = fmt.Errorf("--disk: backing=%q: the only value is allow (follow any backing file the qcow2 image names)", v)
			}
			d.AllowBacking = true
		default:
			err = fmt.Errorf("--disk %q: unknown key %q (want path, iface, format, backing, readonly, cache, serial, num_queues, queue_size, id, coalesce, poll, vfs, throttle, rate_limit_group, bw_*/ops_* size, one_time_burst, refill_time, journal, undo, encrypt, key_file, key_fd, key_env, encrypt_discard, vhost_user, socket)", spec, k)
		}
		if err != nil {
			return d, err
		}
	}
	if d.Iface == DiskCDROM {
		d.Readonly = true
	}
	if d.VhostSocket != "" && !d.VhostUser {
		return d, fmt.Errorf("--disk %q: socket= is a vhost-user back-end's: add vhost_user=on", spec)
	}
	if d.Path == "" && d.Iface != DiskCDROM && !d.VhostUser {
		return d, fmt.Errorf("--disk %q: path=FILE is required (only an iface=cdrom drive may be empty, or a vhost_user=on,socket=PATH disk)", spec)
	}
	if enc != nil && (journalLog != "" || undo) {
		return d, fmt.Errorf("--disk %q: encrypt=on with journal= or undo= is a graph of three nodes: write it as a graph in a config file (docs/disks.md)", spec)
	}
	if journalLog != "" || undo {
		err = diskJournal(&d, journalLog, undo)
	}
	if err == nil && enc != nil {
		err = enc.apply(&d, spec)
	}
	return d, err
}

// ParseNet parses tap=NAME[,mac=MAC][,model=virtio|e1000][,queues=N][,num_queues=2N][,queue_size=N][,vhost=on][,id=ID],
// or user=on[,net=CIDR][,hostfwd=FWD[+FWD...]][,dns_upstream=ADDR[:PORT]] and the same common keys
// for user-mode networking. The user-mode keys are checked when the
// network is built.
func ParseNet(spec string) (Net, error) {
	var n Net
	kv, err := splitSpec("net", spec)
	if err != nil {
		return n, err
	}
	user := false
	pairs := 0 // queues=N: QEMU's count of queue pairs
	if v, ok := kv["user"]; ok {
		if user, err = parseBool("net", "user", v); err != nil {
			return n, err
		}
		if user {
			n.User = &UserNet{}
		}
	}
	for k, v := range inOrder(spec, kv) {
		switch k {
		case "user":
		case "net", "hostfwd", "dns_upstream":
			if !user {
				return n, fmt.Errorf("--net %q: %s= belongs to user-mode networking: add user=on", spec, k)
			}
			switch k {
			case "net":
				n.User.Net = v
			case "hostfwd":
				n.User.HostFwd = strings.Split(v, "+")
			default:
				n.User.DNSUpstream = v
			}
		case "tap":
			n.Tap = v
		case "socket":
			n.Socket = v
		case "firewall":
			n.Firewall = v
		case "pcap":
			n.Pcap = v
		case "ids":
			n.IDS = v
		case "ids_mode":
			n.IDSMode = v
		case "bond":
		case "mac":
			if _, perr := ParseMAC(v); perr != nil {
				err = fmt.Errorf("--net: %v", perr)
			}
			n.MAC = v
		case "num_queues":
			n.NumQueues, err = parseInt("net", k, v)
		case "queues":
			if pairs, err = strconv.Atoi(v); err != nil || pairs < 1 || pairs > MaxNetQueuePairs {
				err = fmt.Errorf("--net %q: queues=%q: give the number of receive/transmit queue pairs, 1 to %d", spec, v, MaxNetQueuePairs)
			}
		case "queue_size":
			n.QueueSize, err = parseInt("net", k, v)
		case "id":
			n.ID = v
		case "model":
			if v != NetVirtio && v != NetE1000 {
				err = fmt.Errorf("--net %q: model %q: want virtio or e1000", spec, v)
			}
			n.Model = v
		case "vhost_user":
			n.VhostUser, err = parseBool("net", k, v)
		case "vhost", "vhost_net":
			n.VhostNet, err = parseBool("net", k, v)
		case "standby":
			n.Standby, err = parseBool("net", k, v)
		default:
			err = fmt.Errorf("--net %q: unknown key %q (want tap, user or socket, bond, net, hostfwd, dns_upstream, mac, model, queues, num_queues, queue_size, id, firewall, pcap, ids, ids_mode, vhost, vhost_user, standby)", spec, k)
		}
		if err != nil {
			return n, err
		}
	}
	if pairs != 0 {
		// queues counts pairs (QEMU), num_queues both directions (Cloud
		// Hypervisor): one NIC may say both, if they agree.
		if n.NumQueues != 0 && n.NumQueues != 2*pairs {
			return n, fmt.Errorf("--net %q: queues=%d and num_queues=%d disagree: num_queues counts both directions (2 per pair), so give one of them", spec, pairs, n.NumQueues)
		}
		n.NumQueues = 2 * pairs
	}
	if mode, ok := kv["bond"]; ok {
		// socket=A+B,bond=MODE: one NIC over several sockets.
		n.Bond = &NetBond{Mode: mode, Sockets: strings.Split(n.Socket, "+")}
		n.Socket = ""
		if len(n.Bond.Sockets) == 1 && n.Bond.Sockets[0] == "" {
			n.Bond.Sockets = nil
		}
	}
	if n.VhostUser {
		// socket= is then the vhost-user back-end's, as in Cloud
		// Hypervisor's --net vhost_user=true,socket=PATH.
		n.VhostSocket, n.Socket = n.Socket, ""
		if n.Bond != nil {
			return n, fmt.Errorf("--net %q: a vhost-user NIC has one back-end: drop bond=", spec)
		}
		if n.VhostNet {
			return n, fmt.Errorf("--net %q: vhost=on is the kernel's vhost-net on a TAP, vhost_user=on another process's back-end: give one of them", spec)
		}
		return n, nil
	}
	if err := n.validateBackend(-1); err != nil {
		return n, fmt.Errorf("--net %q: %w", spec, err)
	}
	return n, nil
}

// ParseMAC parses a colon-separated unicast MAC address.
func ParseMAC(s string) ([6]byte, error) {
	var mac [6]byte
	parts := strings.Split(s, ":")
	if len(parts) != 6 {
		return mac, fmt.Errorf("MAC address %q: want six hex bytes like 52:54:00:12:34:56", s)
	}
	for i, p := range parts {
		v, err := strconv.ParseUint(p, 16, 8)
		if err != nil || len(p) != 2 {
			return mac, fmt.Errorf("MAC address %q: want six hex bytes like 52:54:00:12:34:56", s)
		}
		mac[i] = byte(v)
	}
	if mac[0]&1 != 0 {
		return mac, fmt.Errorf("MAC address %q is a multicast address; a NIC needs a unicast one", s)
	}
	return mac, nil
}

// hasPrefixFold reports whether s starts with the ASCII prefix in any
// case. It compares s's own first bytes: matching a lower-cased copy of s
// instead went wrong where lower-casing changes a character's length (an
// "İ" or a Kelvin sign), cutting the path at the wrong byte.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// ParseConsole parses off|null|tty|file=PATH|socket=PATH.
func ParseConsole(flag, spec string) (Console, error) {
	switch low := strings.ToLower(spec); {
	case low == "off":
		return Console{Mode: ModeOff}, nil
	case low == "null":
		return Console{Mode: ModeNull}, nil
	case low == "tty" || low == "stdio":
		return Console{Mode: ModeTty}, nil
	case hasPrefixFold(spec, "file="):
		return Console{Mode: ModeFile, File: spec[5:]}, nil
	case hasPrefixFold(spec, "socket="):
		return Console{Mode: ModeSocket, Socket: spec[7:]}, nil
	}
	return Console{}, fmt.Errorf("--%s %q: want off, null, tty, file=PATH or socket=PATH", flag, spec)
}
