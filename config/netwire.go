package config

import (
	"errors"
	"fmt"
)

// NetBond is a NIC over several stream sockets (docs/network.md).
type NetBond struct {
	// Mode is "active-backup" (the default) or "balance".
	Mode    string   `json:"mode,omitempty"`
	Sockets []string `json:"sockets"`
}

// validateBackend checks that a NIC has exactly one back-end and sane
// interposer settings; i is its index in the config (-1 for a --net flag,
// whose message names the flag instead).
func (n Net) validateBackend(i int) error {
	what := "net"
	if i >= 0 {
		what = fmt.Sprintf("net %d", i)
	}
	count := 0
	for _, set := range []bool{n.Tap != "" || len(n.TapFDs) > 0, n.User != nil, n.Socket != "", n.Bond != nil} {
		if set {
			count++
		}
	}
	switch {
	case count == 0:
		return fmt.Errorf("%s has no back-end: give tap=NAME (a TAP interface), user=on (user-mode networking) or socket=PATH (a stream socket such as vio switch's)", what)
	case count > 1:
		return fmt.Errorf("%s has more than one back-end: give only one of tap=NAME, user=on and socket=PATH", what)
	}
	if b := n.Bond; b != nil {
		if len(b.Sockets) < 2 {
			return fmt.Errorf("%s: a bond needs two or more sockets: socket=PATH1+PATH2 with bond=MODE", what)
		}
		switch b.Mode {
		case "", "active-backup", "balance":
		default:
			return fmt.Errorf("%s: bond mode %q: want active-backup or balance", what, b.Mode)
		}
	}
	switch n.IDSMode {
	case "", "ids", "ips":
	default:
		return fmt.Errorf("%s: ids_mode %q: want ids (watch only) or ips (the inspector may drop frames)", what, n.IDSMode)
	}
	if n.IDSMode != "" && n.IDS == "" {
		return errors.New(what + ": ids_mode without ids=SOCKET: give the inspector's socket")
	}
	return nil
}
