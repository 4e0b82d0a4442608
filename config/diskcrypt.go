package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/viovmm/vio/block/graph"
)

// diskCrypt is the compact --disk form of an encrypted disk:
// encrypt=on,key_file=PATH (or key_fd=N, key_env=NAME)[,encrypt_discard=on].
// It stands for a graph with a crypt node over the image's leaf.
type diskCrypt struct {
	on   bool
	opts graph.CryptOptions
	keys []string // the crypt keys given, for messages
}

// cryptKeys are the --disk keys diskCrypt takes.
var cryptKeys = []string{"encrypt", "key_file", "key_fd", "key_env", "encrypt_discard"}

// takeCryptKeys removes the crypt keys from kv and parses them; nil when
// none was given.
func takeCryptKeys(kv map[string]string) (*diskCrypt, error) {
	var c diskCrypt
	for _, k := range cryptKeys {
		v, ok := kv[k]
		if !ok {
			continue
		}
		delete(kv, k)
		c.keys = append(c.keys, k)
		var err error
		switch k {
		case "encrypt":
			c.on, err = parseBool("disk", k, v)
		case "encrypt_discard":
			c.opts.Discard, err = parseBool("disk", k, v)
		case "key_file":
			c.opts.KeyFile = v
		case "key_env":
			c.opts.KeyEnv = v
		case "key_fd":
			var fd int
			if fd, err = strconv.Atoi(v); err != nil || fd < 0 {
				err = fmt.Errorf("--disk: key_fd=%q: want a file descriptor number", v)
			}
			c.opts.KeyFD = &fd
		}
		if err != nil {
			return nil, err
		}
	}
	if len(c.keys) == 0 {
		return nil, nil
	}
	return &c, nil
}

// apply turns d, parsed from spec, into the graph c asks for.
func (c *diskCrypt) apply(d *Disk, spec string) error {
	if !c.on {
		return fmt.Errorf("--disk %q: %v need encrypt=on", spec, c.keys)
	}
	if d.Iface == DiskCDROM {
		return fmt.Errorf("--disk %q: a CD-ROM cannot be encrypted", spec)
	}
	if err := c.opts.Check(); err != nil {
		return fmt.Errorf("--disk %q: %w; write it like encrypt=on,key_file=PATH", spec, err)
	}
	opts, err := json.Marshal(&c.opts)
	if err != nil {
		return err
	}
	leaf := &graph.Node{Kind: "raw", Path: d.Path, AllowBacking: d.AllowBacking}
	switch d.ImageType {
	case ImageQcow2:
		leaf.Kind = "qcow2"
	case "", ImageUnknown, ImageRaw:
		if d.AllowBacking {
			return errors.New("--disk: backing=allow applies to qcow2 images: add format=qcow2")
		}
	}
	d.Graph = &graph.Node{Kind: "crypt", Options: opts, Children: []*graph.Node{leaf}}
	d.Path, d.ImageType, d.AllowBacking = "", "", false
	return nil
}
