package vswitch

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"

	"github.com/viovmm/vio/netdev/socket"
)

// Serve accepts connections on l until it is closed, each a port with
// policy pc (its MAC and address learned per connection unless pc gives
// them) speaking the socket package's framing. It returns nil once l is
// closed.
func (s *Switch) Serve(l net.Listener, pc PortConfig) error {
	name := pc.Name
	for k := 1; ; k++ {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		if name != "" && k > 1 {
			pc.Name = fmt.Sprintf("%s-%d", name, k)
		}
		if _, err := s.AddPort(socket.New(c, socket.Options{Blocking: true}), pc); err != nil {
			if errors.Is(err, ErrClosed) {
				return nil
			}
			return err
		}
	}
}

// ServeControl answers every connection on l with the switch's counters
// as one JSON object (Stats), then closes it. It returns nil once l is
// closed.
func (s *Switch) ServeControl(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		json.NewEncoder(c).Encode(s.Stats())
		c.Close()
	}
}
