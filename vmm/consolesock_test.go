package vmm

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConsoleSocketPath: a console socket replaces a stale socket, but
// neither a regular file (left as it was) nor a socket in use.
func TestConsoleSocketPath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(file, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenConsoleSocket(file); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("console socket over a regular file: %v", err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me" {
		t.Fatalf("the file at the socket path was changed: %q %v", b, err)
	}

	sock := filepath.Join(dir, "con.sock")
	live, err := listenConsoleSocket(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := listenConsoleSocket(sock); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("console socket over a live one: %v", err)
	}
	// A VM that died leaves its socket behind: the next one takes over.
	live.(*net.UnixListener).SetUnlinkOnClose(false)
	live.Close()
	l, err := listenConsoleSocket(sock)
	if err != nil {
		t.Fatalf("console socket over a stale one: %v", err)
	}
	l.Close()
}
