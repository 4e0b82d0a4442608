package graph

import (
	"encoding/json"
	"errors"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/crypt"
)

// CryptOptions are a crypt node's options: where its passphrase comes
// from (exactly one of KeyFile, KeyFD, KeyEnv) and whether discards pass
// through (see crypt.Options).
type CryptOptions struct {
	KeyFile string `json:"key_file,omitempty"`
	KeyFD   *int   `json:"key_fd,omitempty"`
	KeyEnv  string `json:"key_env,omitempty"`
	Discard bool   `json:"discard,omitempty"`
	// Passphrase is refused: it exists so that someone who tries it gets
	// told where the passphrase goes instead.
	Passphrase json.RawMessage `json:"passphrase,omitempty"`
}

func (o *CryptOptions) source() crypt.KeySource {
	return crypt.KeySource{File: o.KeyFile, FD: o.KeyFD, Env: o.KeyEnv}
}

// Check reports options that name no key source, several, or a passphrase.
func (o *CryptOptions) Check() error {
	if o.Passphrase != nil {
		return errors.New("a passphrase in the configuration is refused (it would show in the config the API returns): put it in a file (key_file), a descriptor (key_fd) or an environment variable (key_env)")
	}
	return o.source().Check()
}

var kindCrypt = &Kind{
	Name: "crypt", MinChildren: 1, MaxChildren: 1,
	Check: func(n *Node, _ map[string]bool) error {
		var o CryptOptions
		if err := decodeOptions(n.Options, &o); err != nil {
			return err
		}
		return o.Check()
	},
	Open: func(_ *Builder, n *Node, _ NodeOptions, c []block.Backend) (block.Backend, error) {
		var o CryptOptions
		if err := decodeOptions(n.Options, &o); err != nil {
			return nil, err
		}
		pass, err := o.source().Read()
		if err != nil {
			return nil, err
		}
		defer clear(pass)
		return crypt.Open(c[0], pass, crypt.Options{Discard: o.Discard})
	},
}

func init() { Register(kindCrypt) }

// KeyFiles returns the key files the crypt nodes of the graph at root
// read: a sandboxed VM must still be able to read them when a guest reboot
// rebuilds its disks.
func KeyFiles(root *Node) []string {
	var files []string
	var walk func(n *Node)
	walk = func(n *Node) {
		if n == nil {
			return
		}
		if n.Kind == kindCrypt.Name {
			var o CryptOptions
			if decodeOptions(n.Options, &o) == nil && o.KeyFile != "" {
				files = append(files, o.KeyFile)
			}
		}
		for _, c := range n.Children {
			walk(c)
		}
	}
	walk(root)
	return files
}
