package migration_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/viovmm/vio/migration"
)

// A receiver's UNIX socket file appears only once it listens: a sender
// that connects as soon as it sees the file is never refused (before, the
// file appeared at bind, a moment before listen: seen as "connection
// refused" in a test that polled for it).
func TestListenSocketAppearsListening(t *testing.T) {
	dir := t.TempDir()
	for i := range 200 {
		path := filepath.Join(dir, "mig"+strconv.Itoa(i)+".sock")
		ep, err := migration.ParseURL("unix:" + path)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan net.Listener, 1)
		go func() {
			l, err := migration.Listen(ep)
			if err != nil {
				t.Error(err)
			}
			done <- l
		}()
		var conn net.Conn
		for conn == nil {
			if _, err := os.Lstat(path); err != nil {
				select {
				case l := <-done: // Listen returned: the file must be there
					if l == nil {
						t.FailNow()
					}
					done <- l
				default:
				}
				continue // polling for the file, as a sender does
			}
			if conn, err = net.Dial("unix", path); err != nil {
				t.Fatalf("round %d: the socket file exists but: %v", i, err)
			}
		}
		conn.Close()
		l := <-done
		l.Close()
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("round %d: the socket file stays after Close: %v", i, err)
		}
	}
	// No temporary name is left behind either.
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("files left: %v", left)
	}
}

// A path that exists is refused, not replaced.
func TestListenRefusesExistingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "taken")
	if err := os.WriteFile(path, []byte("someone's"), 0o600); err != nil {
		t.Fatal(err)
	}
	ep, _ := migration.ParseURL("unix:" + path)
	if _, err := migration.Listen(ep); !errors.Is(err, migration.ErrBadURL) {
		t.Fatalf("Listen on an existing file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "someone's" {
		t.Fatal("the existing file was replaced")
	}
}
