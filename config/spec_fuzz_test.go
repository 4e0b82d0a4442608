package config

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode"
)

// oneSentence reports what is wrong with err as a user-facing message, or
// "" if it is one sentence: not empty, one line, no full stop at the end
// and no sentence break (". " before a capital) outside quoted text.
func oneSentence(err error) string {
	msg := err.Error()
	if msg == "" {
		return "empty message"
	}
	if strings.ContainsAny(msg, "\n\r") {
		return "more than one line"
	}
	if strings.HasSuffix(msg, ".") {
		return "ends with a full stop"
	}
	// Drop quoted text (%q of what the user typed), honouring escapes.
	var b strings.Builder
	in := false
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		switch {
		case in && c == '\\':
			i++
		case c == '"':
			in = !in
		case !in:
			b.WriteByte(c)
		}
	}
	plain := []rune(b.String())
	for i := 0; i+2 < len(plain); i++ {
		if plain[i] == '.' && plain[i+1] == ' ' && unicode.IsUpper(plain[i+2]) {
			return "two sentences"
		}
	}
	return ""
}

// FuzzSpecs feeds arbitrary command-line specs to every key=value parser
// of the CLI (--memory, --disk, --net, --balloon, --vsock, --device, --platform,
// --cloud-init, --serial/--console) and to the size and MAC parsers they
// use. None may panic; each error is one sentence, and the same input
// always gives the same answer (the keys live in a map, whose order
// varies from run to run); sizes and MAC addresses round-trip through
// their formatters; and what a parser accepts keeps its documented
// promises (a disk has a path or a graph unless it is an empty CD-ROM drive, which
// is read-only; a serial number fits virtio-blk's 20 bytes; a console's
// file or socket is exactly what followed the '=').
func FuzzSpecs(f *testing.F) {
	for _, s := range []string{
		"path=a.img,iface=virtio,format=qcow2,readonly=on,cache=none,serial=S1,num_queues=2,queue_size=128,id=d0",
		"path=a,coalesce=adaptive,throttle=bw:10M+ops:100,journal=/j,undo=on",
		"path=a,poll=adaptive:100us", "path=a,poll=50",
		"iface=cdrom", "path=a,encrypt=on,key_file=/k", "path=,iface=ide,x=1,y", "path=a,path=b",
		"tap=tap0,mac=52:54:00:12:34:56,model=e1000", "user=on,net=10.0.2.0/24,hostfwd=tcp::2222-:22+udp::53-:53", "user=on,dns_upstream=[::1]:5353",
		"socket=/a+/b,bond=active-backup", "soc\u212aet=/s", "F\u0130LE=/f", "mac=01:00:00:00:00:00", "1G", "size=512M,shared=on", "size=2Gi",
		"cid=3,socket=/v.sock", "size=0,free_page_reporting=on", "file=/tmp/log", "SOCKET=/s", "socket=",
		"num_pci_segments=2,uuid=00000000-0000-0000-0000-000000000001", "user=maybe,iface=nope",
		"path=/sys/bus/pci/devices/0000:00:05.0,id=vf0,failover=sb", "tap=t,mac=52:54:00:12:34:56,id=sb,standby=on", "failover=",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		type parser struct {
			name  string
			parse func(string) (any, error)
		}
		parsers := []parser{
			{"memory", func(s string) (any, error) { return ParseMemory(s) }},
			{"disk", func(s string) (any, error) { return ParseDisk(s) }},
			{"net", func(s string) (any, error) { return ParseNet(s) }},
			{"balloon", func(s string) (any, error) { return ParseBalloon(s) }},
			{"vsock", func(s string) (any, error) { return ParseVsock(s) }},
			{"device", func(s string) (any, error) { return ParseDevice(s) }},
			{"platform", func(s string) (any, error) { return ParsePlatform(s) }},
			{"cloud-init", func(s string) (any, error) { return ParseCloudInit(s) }},
			{"console", func(s string) (any, error) { return ParseConsole("console", s) }},
			{"size", func(s string) (any, error) { return ParseSize(s) }},
			{"mac", func(s string) (any, error) { return ParseMAC(s) }},
		}
		for _, p := range parsers {
			v, err := p.parse(spec)
			v2, err2 := p.parse(spec)
			if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) || !reflect.DeepEqual(v, v2) {
				t.Fatalf("--%s %q parses two ways: %v / %v", p.name, spec, err, err2)
			}
			if err != nil {
				if why := oneSentence(err); why != "" {
					t.Fatalf("--%s %q: error %q: %s", p.name, spec, err, why)
				}
				continue
			}
			switch v := v.(type) {
			case int64:
				if n, err := ParseSize(FormatSize(v)); err != nil || n != v {
					t.Fatalf("size %q = %d formats as %q, which parses as %d, %v", spec, v, FormatSize(v), n, err)
				}
			case [6]byte:
				s := fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", v[0], v[1], v[2], v[3], v[4], v[5])
				if m, err := ParseMAC(s); err != nil || m != v {
					t.Fatalf("MAC %q = %v formats as %q, which parses as %v, %v", spec, v, s, m, err)
				}
			case Memory:
				if !strings.Contains(spec, "=") {
					if n, _ := ParseSize(spec); n != v.Size {
						t.Fatalf("--memory %q: size %d, ParseSize says %d", spec, v.Size, n)
					}
				}
			case Disk:
				if v.Path == "" && v.Graph == nil && v.Iface != DiskCDROM || v.Iface == DiskCDROM && !v.Readonly || len(v.Serial) > 20 {
					t.Fatalf("--disk %q accepted as %+v", spec, v)
				}
			case Net:
				if v.MAC != "" {
					if _, err := ParseMAC(v.MAC); err != nil {
						t.Fatalf("--net %q accepted with MAC %q: %v", spec, v.MAC, err)
					}
				}
			case Console:
				_, after, _ := strings.Cut(spec, "=")
				if v.Mode == ModeFile && v.File != after || v.Mode == ModeSocket && v.Socket != after {
					t.Fatalf("--console %q accepted as %+v: the path is not what followed '='", spec, v)
				}
			}
		}
	})
}
