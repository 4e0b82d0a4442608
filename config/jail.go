package config

import "fmt"

// Jail is `vio run --jail uid=N,gid=N[,dir=PATH]`: run the VMM in new
// namespaces, with a root holding only its VM's files, as an unprivileged
// user (see docs/security.md). It describes the process, not the VM, so
// it is no part of a VM config.
type Jail struct {
	UID, GID int
	// Dir is where the jail's (empty, host-invisible) root directory is
	// made; "" is the system's temporary directory.
	Dir string
}

// ParseJail parses the --jail flag.
func ParseJail(spec string) (Jail, error) {
	kv, err := splitSpec("jail", spec)
	if err != nil {
		return Jail{}, err
	}
	var j Jail
	for k, v := range kv {
		switch k {
		case "uid":
			j.UID, err = parseInt("jail", k, v)
		case "gid":
			j.GID, err = parseInt("jail", k, v)
		case "dir":
			j.Dir = v
		default:
			return Jail{}, fmt.Errorf("--jail %q: unknown key %q (want uid, gid, dir)", spec, k)
		}
		if err != nil {
			return Jail{}, err
		}
	}
	if _, ok := kv["uid"]; !ok {
		return Jail{}, fmt.Errorf("--jail %q: uid= is missing; write it like uid=65534,gid=65534", spec)
	}
	if _, ok := kv["gid"]; !ok {
		return Jail{}, fmt.Errorf("--jail %q: gid= is missing; write it like uid=65534,gid=65534", spec)
	}
	if j.UID == 0 || j.GID == 0 {
		return Jail{}, fmt.Errorf("--jail %q: uid and gid must not be 0 (root): give an unprivileged user, e.g. uid=65534,gid=65534", spec)
	}
	return j, nil
}
