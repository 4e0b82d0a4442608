package main

import (
	"log/slog"
	"os"
	"strings"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/jail"
	"github.com/viovmm/vio/sandbox"
)

// jailed runs this `vio run` again as a jailed child when --jail asks for
// it and this process is not that child yet (jail.Spawn: new namespaces;
// the child enters its jail once the VM is built, see enterJail). It
// reports whether it did, and the child's exit as an error.
func jailed(spec string) (bool, error) {
	if spec == "" {
		return false, nil
	}
	if _, child := jail.Child(); child {
		return false, nil
	}
	j, err := config.ParseJail(spec)
	if err != nil {
		return true, err
	}
	code, err := jail.Spawn(os.Args[1:], j.Dir)
	if err != nil {
		return true, err
	}
	if code != 0 {
		// The child said why; pass its status on.
		return true, exitError{code: code}
	}
	return true, nil
}

// enterJail moves the jailed child into its jail: the VM is built, so
// /dev/kvm, the TAPs and the disks are open; what a rebuilt VM opens again
// (a guest reboot) is bound into the jail at the same paths, the same
// list the sandbox's Landlock ruleset allows (vmPolicy).
func enterJail(spec string, p sandbox.Policy) error {
	root, child := jail.Child()
	if spec == "" || !child {
		return nil
	}
	j, err := config.ParseJail(spec)
	if err != nil {
		return err
	}
	var binds []jail.Bind
	for _, r := range p.Rules {
		if strings.HasPrefix(r.Path, "/proc/") {
			continue // the jail mounts a /proc of its own
		}
		binds = append(binds, jail.Bind{Path: r.Path, Writable: r.Access&(sandbox.Write|sandbox.Create) != 0})
	}
	return jail.Enter(jail.Spec{Root: root, User: jail.User{UID: j.UID, GID: j.GID}, Binds: binds})
}

// confine is what `vio run` does once its VM is built: the jail (with
// --jail), then the sandbox, both from the same list of paths.
func (o runOptions) confine(cfg *config.VM, log *slog.Logger) error {
	p := vmPolicy(cfg, o.apiSocket, o.obs, o.sandbox.allow)
	if err := enterJail(o.jail, p); err != nil {
		return err
	}
	return o.sandbox.confine(p, log)
}
