package image

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/nbd"
)

// IsNBD reports whether path names an NBD export rather than a file:
// nbd://host[:port]/export or nbd+unix:///export?socket=PATH.
func IsNBD(path string) bool {
	return strings.HasPrefix(path, "nbd://") || strings.HasPrefix(path, "nbd+unix://")
}

// nbdConnectTimeout bounds the first connection to an export; after that
// the client reconnects by itself (see nbd.Client).
const nbdConnectTimeout = 30 * time.Second

// openNBD connects to an export. Its bytes are the disk: an NBD export is
// raw, so another format would have to be layered on top by the server.
func openNBD(uri string, opts OpenOptions) (block.Backend, error) {
	if opts.Format != "" && opts.Format != Raw {
		return nil, fmt.Errorf("%s: an NBD export is raw; format %q over NBD is not supported", uri, opts.Format)
	}
	ctx, cancel := context.WithTimeout(context.Background(), nbdConnectTimeout)
	defer cancel()
	c, err := nbd.Dial(ctx, uri, nbd.Options{ReadOnly: opts.ReadOnly, TLS: opts.NBDTLS})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", uri, err)
	}
	return c, nil
}
