package config

import (
	"errors"
	"fmt"
	"strconv"
)

// ParseVsock parses the --vsock flag as Cloud Hypervisor spells it:
// cid=CID,socket=PATH[,id=ID].
func ParseVsock(spec string) (Vsock, error) {
	var v Vsock
	kv, err := splitSpec("vsock", spec)
	if err != nil {
		return v, err
	}
	for k, s := range inOrder(spec, kv) {
		switch k {
		case "cid":
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return v, fmt.Errorf("--vsock: cid=%q: want a number, 3 or more", s)
			}
			v.CID = n
		case "socket":
			v.Socket = s
		case "id":
			v.ID = s
		default:
			return v, fmt.Errorf("--vsock %q: unknown key %q (want cid, socket, id)", spec, k)
		}
	}
	if _, ok := kv["cid"]; !ok {
		return v, fmt.Errorf("--vsock %q: cid= is missing; write it like cid=3,socket=/run/vm.vsock", spec)
	}
	if v.Socket == "" {
		return v, fmt.Errorf("--vsock %q: socket= is missing; write it like cid=3,socket=/run/vm.vsock", spec)
	}
	return v, v.validate()
}

// validate checks a vsock device's settings.
func (v Vsock) validate() error {
	switch {
	case v.CID < 3:
		return fmt.Errorf("vsock cid %d: context ids 0-2 are reserved (2 is the host): give cid=3 or more", v.CID)
	case v.CID >= 1<<32-1:
		return fmt.Errorf("vsock cid %d: Linux guests take 32-bit context ids: give a cid below 4294967295", v.CID)
	case v.Socket == "":
		return errors.New("vsock has no socket: give the path of the UNIX socket host programs connect to (socket=PATH)")
	}
	return nil
}
