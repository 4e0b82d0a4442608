package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/migration"
)

// sharedRAM is what a local migration's source passes for guest RAM of
// the given size: memory's memfd backing, as a VM with shared=on has.
func sharedRAM(t *testing.T, size int64) (*memory.Memory, migration.SharedRAM) {
	t.Helper()
	layout, err := x86.RAMLayout(uint64(size))
	if err != nil {
		t.Fatal(err)
	}
	m, err := memory.NewWithOptions(layout, memoryOptions(config.Memory{Size: size, Shared: true}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	v := &VM{mem: m}
	fd, offsets, err := (&migrationSource{v: v}).SharedRAM()
	if err != nil {
		t.Fatal(err)
	}
	ram := migration.SharedRAM{FD: fd}
	for i, r := range m.Regions() {
		ram.Regions = append(ram.Regions, migration.SharedRegion{GPA: r.GPA, Size: r.Size(), Offset: offsets[i]})
	}
	return m, ram
}

// A source VM whose RAM is not shared cannot hand it over, and says how
// to start it so that it can.
func TestSharedRAMNotShared(t *testing.T) {
	layout, _ := x86.RAMLayout(config.MinMemory)
	m, err := memory.NewWithOptions(layout, memoryOptions(config.Memory{Size: config.MinMemory}))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	_, _, err = (&migrationSource{v: &VM{mem: m}}).SharedRAM()
	if !errors.Is(err, ErrMigrationRequest) || !strings.Contains(err.Error(), "shared=on") {
		t.Fatalf("SharedRAM of anonymous RAM: %v", err)
	}
}

// The destination of a local migration, built with the real KVM: its
// guest RAM is the source's pages, registered with KVM; a layout that is
// not the config's, or a config without shared=on, is refused with a
// sentence and nothing kept. After Disown the source's writes no longer
// reach the destination.
func TestNewIncomingShared(t *testing.T) {
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(kernel, []byte("never booted"), 0o644)
	cfg := config.Default()
	cfg.Payload.Kernel = kernel
	cfg.Memory.Size, cfg.Memory.Shared = config.MinMemory, true
	src, ram := sharedRAM(t, config.MinMemory)
	opts := Options{AllowPVM: true}
	v, err := NewIncoming(cfg.Clone(), &ram, IO{}, opts)
	if errors.Is(err, ErrNoKVM) {
		t.Skip("no /dev/kvm here")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, err := src.WriteAt([]byte("written at the source"), 0x1000); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 21)
	if _, err := v.Memory().ReadAt(got, 0x1000); err != nil || string(got) != "written at the source" {
		t.Fatalf("the destination reads %q, %v: not the source's RAM", got, err)
	}
	for _, r := range v.Memory().Regions() {
		if _, _, ok := r.File(); !ok {
			t.Errorf("the destination's region %#x has no file: it could not migrate on locally", r.GPA)
		}
	}
	if err := src.Disown(); err != nil {
		t.Fatal(err)
	}
	src.WriteAt([]byte("stray"), 0x1000)
	v.Memory().ReadAt(got[:5], 0x1000)
	if string(got[:5]) == "stray" {
		t.Error("the source still writes into the destination's RAM after Disown")
	}

	bigger := cfg.Clone()
	bigger.Memory.Size *= 2
	_, ram2 := sharedRAM(t, config.MinMemory)
	if _, err := NewIncoming(bigger, &ram2, IO{}, opts); err == nil || !strings.Contains(err.Error(), "migrate between the same vio versions") {
		t.Errorf("a layout not the config's: %v", err)
	}
	private := cfg.Clone()
	private.Memory.Shared = false
	if _, err := NewIncoming(private, &ram2, IO{}, opts); err == nil || !strings.Contains(err.Error(), "shared=on") {
		t.Errorf("a config without shared RAM: %v", err)
	}
}
