package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/journal"
)

// TestImageJournalCLI: the verbs on a journalled disk a "VM" (the journal
// opened directly) wrote: mark, revert to the mark, commit into the base,
// compact; a disk in use is refused.
func TestImageJournalCLI(t *testing.T) {
	dir := t.TempDir()
	base, log := filepath.Join(dir, "base.img"), filepath.Join(dir, "base.journal")
	if _, err := runImage(t, "create", "-f", "raw", base, "1M"); err != nil {
		t.Fatal(err)
	}
	// write opens the disk as a VM would and writes one byte value.
	write := func(v byte) {
		t.Helper()
		b, err := image.Open(base, image.OpenOptions{Format: image.Raw, Lock: true})
		if err != nil {
			t.Fatal(err)
		}
		j, err := journal.Open(b, log, journal.Options{})
		if err != nil {
			t.Fatal(err)
		}
		j.WriteAt(bytes.Repeat([]byte{v}, 4096), 0)
		j.Flush()
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := runImage(t, "journal", "list", base, filepath.Join(dir, "typo")); err == nil || !strings.Contains(err.Error(), "typo") {
		t.Fatalf("list of a missing log: %v", err)
	}
	write(1)
	if out, err := runImage(t, "journal", "mark", "-f", "raw", base, log, "one"); err != nil || !strings.Contains(out, "as one") {
		t.Fatalf("mark: %v\n%s", err, out)
	}
	write(2)
	out, err := runImage(t, "journal", "list", "-f", "raw", base, log)
	if err != nil || !strings.Contains(out, "one") || !strings.Contains(out, "current") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if out, err := runImage(t, "journal", "revert", "-f", "raw", base, log, "nope"); err == nil || !strings.Contains(err.Error(), "neither a mark nor") {
		t.Fatalf("revert to a missing point: %v\n%s", err, out)
	}
	if _, err := runImage(t, "journal", "revert", "-f", "raw", base, log, "one"); err != nil {
		t.Fatal(err)
	}
	// The base is untouched until the commit, which puts the mark in.
	if data, _ := os.ReadFile(base); data[0] != 0 {
		t.Fatal("the base changed before a commit")
	}
	// A disk in use is refused.
	b, err := image.Open(base, image.OpenOptions{Format: image.Raw, Lock: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runImage(t, "journal", "commit", "-f", "raw", base, log); err == nil {
		t.Fatal("commit of a disk in use succeeded")
	}
	b.Close()
	if _, err := runImage(t, "journal", "commit", "-f", "raw", base, log); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(base); data[0] != 1 || data[4095] != 1 || data[4096] != 0 {
		t.Fatalf("after commit the base starts %v, want the mark's 1s", data[:2])
	}
	if out, err := runImage(t, "journal", "compact", "-f", "raw", base, log); err != nil || !strings.Contains(out, "compacted") {
		t.Fatalf("compact: %v\n%s", err, out)
	}
	out, err = runImage(t, "journal", "list", "-o", "json", "-f", "raw", base, log)
	if err != nil || !strings.Contains(out, `"name": "one"`) {
		t.Fatalf("list after commit: %v\n%s", err, out)
	}
}
