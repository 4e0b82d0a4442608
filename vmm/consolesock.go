package vmm

import (
	"fmt"
	"io/fs"
	"net"
	"os"
)

// listenConsoleSocket creates a console's unix socket at path. A stale
// socket there (nobody listening: a VM that died) is replaced; a socket
// another process listens on, or any file that is not a socket, is an
// error: a typo in --serial socket=PATH must not delete the user's file.
func listenConsoleSocket(path string) (net.Listener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("console socket %s exists and is not a socket: remove it or choose another path", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("console socket %s is in use by another process: stop it or choose another path", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("console socket %s: removing the stale socket: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	return l, nil
}
