package config

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/viovmm/vio/block/graph"
)

// diskJournal turns the compact --disk journal=LOG and undo=on keys into
// the graph they stand for: a journal node over a leaf of the disk's path
// and format. A journal's base is never probed (a guest could have
// written a header into it through the journal), so format= is required.
func diskJournal(d *Disk, log string, undo bool) error {
	switch {
	case d.Iface == DiskCDROM:
		return errors.New("--disk: journal= and undo= are for disks, not cdrom drives")
	case d.ImageType != ImageRaw && d.ImageType != ImageQcow2:
		return errors.New("--disk: journal= and undo= need format=raw or format=qcow2: a journalled disk's base is never probed")
	case d.Readonly:
		return errors.New("--disk: journal= and undo= record writes: drop readonly=on")
	}
	opts, err := json.Marshal(graph.JournalOptions{Log: log, Undo: undo})
	if err != nil {
		return fmt.Errorf("--disk: %w", err)
	}
	kind := map[string]string{ImageRaw: "raw", ImageQcow2: "qcow2"}[d.ImageType]
	d.Graph = &graph.Node{Kind: "journal", Options: opts,
		Children: []*graph.Node{{Kind: kind, Path: d.Path, AllowBacking: d.AllowBacking}}}
	d.Path, d.ImageType, d.AllowBacking = "", "", false
	return nil
}
