package graph

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/nbd"
)

// Kind describes a node kind. A new interposer joins the graph by
// registering one (see kindThrottle and kindFaults for the pattern).
type Kind struct {
	Name string
	// Leaf kinds open an image at Path and have no children.
	Leaf bool
	// MinChildren and MaxChildren bound an interposer's children
	// (MaxChildren 0: no upper bound).
	MinChildren, MaxChildren int
	// SameSize requires the children to be of one size (a mirror), checked
	// when they are open.
	SameSize bool
	// SharedPaths lets nbd leaves directly below the node name one URI
	// several times (a multipath: each is its own connection).
	SharedPaths bool
	// Check validates the node's options; groups are the throttle groups
	// the VM defines. Nil: the kind takes no options.
	Check func(n *Node, groups map[string]bool) error
	// Open builds the node from its open children (none for a leaf), read-only
	// and with the cache mode o says. It
	// owns the children on success; on failure the Builder closes them.
	Open func(b *Builder, n *Node, o NodeOptions, children []block.Backend) (block.Backend, error)
}

var kinds = map[string]*Kind{}

// Register adds a kind. It is meant for init functions of this package.
func Register(k *Kind) {
	if _, dup := kinds[k.Name]; dup {
		panic("graph: kind " + k.Name + " registered twice")
	}
	kinds[k.Name] = k
}

func kindList() string {
	var names []string
	for n := range kinds {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func init() {
	Register(&Kind{Name: image.Raw, Leaf: true, Open: openLeaf(image.Raw)})
	Register(&Kind{Name: image.Qcow2, Leaf: true, Open: openLeaf(image.Qcow2)})
	Register(&Kind{Name: "nbd", Leaf: true, Check: checkNBD, Open: openNBD})
	Register(kindThrottle)
	Register(kindFaults)
}

func checkNBD(n *Node, _ map[string]bool) error {
	if !image.IsNBD(n.Path) {
		return fmt.Errorf("path %q is not an NBD URI: give nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH", n.Path)
	}
	_, err := nbdTLS(n)
	return err
}

// nbdOptions are an nbd leaf's: TLS credentials in a directory laid out
// as QEMU's tls-creds-x509 (ca-cert.pem; client-cert.pem and
// client-key.pem if the server verifies clients), and the name the
// server's certificate must carry (default: the URI's host; required for
// a unix socket).
type nbdOptions struct {
	TLSCreds    string `json:"tls-creds"`
	TLSHostname string `json:"tls-hostname"`
}

// nbdTLS returns the node's TLS config, nil without tls-creds.
func nbdTLS(n *Node) (*tls.Config, error) {
	var o nbdOptions
	if err := decodeOptions(n.Options, &o); err != nil {
		return nil, err
	}
	if o.TLSCreds == "" {
		if o.TLSHostname != "" {
			return nil, errors.New("tls-hostname needs tls-creds (a directory with ca-cert.pem)")
		}
		return nil, nil
	}
	if o.TLSHostname == "" && strings.HasPrefix(n.Path, "nbd+unix:") {
		return nil, errors.New("TLS over a unix socket needs tls-hostname: the name the server's certificate carries")
	}
	return nbd.ClientTLSConfig(o.TLSCreds, o.TLSHostname)
}

func openNBD(b *Builder, n *Node, o NodeOptions, _ []block.Backend) (block.Backend, error) {
	cfg, err := nbdTLS(n)
	if err != nil {
		return nil, err
	}
	if o.Path {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := nbd.Dial(ctx, n.Path, nbd.Options{ReadOnly: o.ReadOnly, TLS: cfg, ReplayBuffer: -1})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n.Path, err)
		}
		return c, nil
	}
	return image.Open(n.Path, image.OpenOptions{Format: image.Raw, ReadOnly: o.ReadOnly, NBDTLS: cfg})
}

// openLeaf opens an image with its format given, never probed.
func openLeaf(format string) func(b *Builder, n *Node, o NodeOptions, _ []block.Backend) (block.Backend, error) {
	return func(b *Builder, n *Node, o NodeOptions, _ []block.Backend) (block.Backend, error) {
		if n.Kind != "nbd" && image.IsNBD(n.Path) {
			return nil, fmt.Errorf("%s is an NBD URI: use a leaf of kind nbd for it", n.Path)
		}
		return image.Open(n.Path, image.OpenOptions{
			Format: format, ReadOnly: o.ReadOnly, Cache: o.Cache, Lock: b.opts.Lock,
			AllowBacking: n.AllowBacking,
		})
	}
}

// rawJSON is what a node's options look like when absent.
func noOptions(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s == "" || s == "null" || s == "{}"
}
