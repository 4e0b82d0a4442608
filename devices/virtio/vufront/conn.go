// Connecting to the back-end: at start-up, and again after a loss.

package vufront

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/viovmm/vio/vhostuser"
)

// dialError is a connection that could not be made (nobody listens
// yet), as opposed to a back-end that answered wrongly.
type dialError struct{ err error }

func (e dialError) Error() string { return e.err.Error() }
func (e dialError) Unwrap() error { return e.err }

// firstConnect connects at start-up. A back-end started at the same time
// as vio (two units of one service) may not listen yet: vio waits for it
// up to ReconnectTimeout, as it would for one that restarts. A back-end
// that answers wrongly is refused at once.
func (d *Device) firstConnect() (*connection, error) {
	deadline := time.Now().Add(d.cfg.ReconnectTimeout)
	backoff := firstBackoff
	for attempt := 1; ; attempt++ {
		c, err := d.connect()
		var de dialError
		switch {
		case err == nil:
			return c, nil
		case !errors.As(err, &de):
			return nil, fmt.Errorf("vhost-user back-end at %s: %w", d.cfg.Socket, err)
		case time.Now().After(deadline):
			return nil, fmt.Errorf("no vhost-user back-end listens at %s after %v (%v): start it before vio, or within that time", d.cfg.Socket, d.cfg.ReconnectTimeout, de.err)
		case attempt == 1:
			d.log.Info("waiting for the vhost-user back-end to listen", "within", d.cfg.ReconnectTimeout, "err", de.err)
		}
		time.Sleep(backoff) // a backoff between attempts, bounded by the deadline
		backoff = min(2*backoff, maxBackoff)
	}
}

// connect dials the socket and runs the opening exchanges (SET_OWNER,
// GET_FEATURES, protocol features) on a fresh connection.
func (d *Device) connect() (*connection, error) {
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: d.cfg.Socket, Net: "unix"})
	if err != nil {
		return nil, dialError{err}
	}
	fe := vhostuser.NewFrontend(uc, d.cfg.Timeout)
	c := &connection{fe: fe, hup: make(chan struct{})}
	fail := func(err error) (*connection, error) {
		fe.Close()
		return nil, err
	}
	if err := fe.SetOwner(); err != nil {
		return fail(err)
	}
	offered, err := fe.GetFeatures()
	if err != nil {
		return fail(err)
	}
	c.offered = offered
	if offered&vhostuser.FProtocolFeatures != 0 {
		po, err := fe.GetProtocolFeatures()
		if err != nil {
			return fail(err)
		}
		if err := fe.SetProtocolFeatures(po & wantProtocol); err != nil {
			return fail(err)
		}
	}
	stop, err := watchHangup(uc, c.hup)
	if err != nil {
		return fail(err)
	}
	c.watch = stop
	return c, nil
}

// drop closes a connection and stops its watcher.
func (d *Device) drop(c *connection) {
	if c == nil {
		return
	}
	if c.watch != nil {
		c.watch()
	}
	c.fe.Close()
}
