package main

import (
	"net"
	"path/filepath"
	"slices"
	"testing"
)

// TestUnixListening: the bench waits for serve-disk's socket by the
// kernel's table; a socket that is only bound must not count.
func TestUnixListening(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "l.sock")
	if ok, err := unixListening(path); err != nil || ok {
		t.Fatalf("before listening: %v, %v", ok, err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := unixListening(path); err != nil || !ok {
		t.Errorf("listening: %v, %v", ok, err)
	}
	l.Close()
	if ok, _ := unixListening(path); ok {
		t.Error("closed listener still counted")
	}
	bound := filepath.Join(dir, "b.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: bound, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, _ := unixListening(bound); ok {
		t.Error("a bound datagram socket counted as listening")
	}
}

func TestSharedMemory(t *testing.T) {
	got := sharedMemory([]string{"vio", "run", "--memory", "256M", "--cpus", "2"})
	if want := []string{"vio", "run", "--memory", "size=256M,shared=on", "--cpus", "2"}; !slices.Equal(got, want) {
		t.Errorf("%q, want %q", got, want)
	}
}
