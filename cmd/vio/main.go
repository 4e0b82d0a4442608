// Command vio is a virtual machine monitor for Linux/KVM hosts whose reason
// to exist is I/O virtualization. This package does wiring and presentation
// only: the work lives in the library packages.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// subcommands is filled by the init functions of this package's files, one
// file per verb, so verbs can be added without touching this file.
var subcommands []func() *cobra.Command

func main() {
	var sf serveFlags
	root := &cobra.Command{
		Use:           "vio",
		Short:         "vio runs Linux guests on KVM with emulated, paravirtual and pass-through I/O",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		// `vio --api-socket PATH` is `vio serve --api-socket PATH`: the
		// form Kata Containers uses to start a Cloud Hypervisor.
		RunE: func(c *cobra.Command, _ []string) error {
			if sf.socket == "" {
				return c.Help()
			}
			return serve(c.Context(), sf)
		},
	}
	sf.add(root)
	for _, f := range subcommands {
		root.AddCommand(f())
	}
	if err := root.Execute(); err != nil {
		if err.Error() != "" {
			fmt.Fprintln(os.Stderr, "vio:", err)
		}
		os.Exit(exitStatus(err))
	}
}

// exitError carries a specific exit status out of a command, with the
// sentence to print.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

func exitStatus(err error) int {
	if e, ok := err.(exitError); ok {
		return e.code
	}
	return 1
}
