package graph

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/journal"
)

// JournalOptions are a journal node's options (see package block/journal):
// the log file, undo mode and retention.
type JournalOptions struct {
	// Log is the journal's log file, created when missing. An undo
	// disk may leave it out (its log is then an unlinked scratch file).
	Log string `json:"log,omitempty"`
	// Undo throws every change away when the disk closes (the VM ends
	// or reboots); the child is never written.
	Undo bool `json:"undo,omitempty"`
	// Retention: unnamed flush points kept, their maximum age, and the
	// log's maximum size (see journal.Options).
	KeepPoints int      `json:"keep_points,omitempty"`
	KeepAge    Duration `json:"keep_age,omitempty"`
	MaxLog     Size     `json:"max_log,omitempty"`
	// MaxExtents bounds the index's memory (about 24 bytes an extent).
	MaxExtents int `json:"max_extents,omitempty"`
}

func (o JournalOptions) check() error {
	switch {
	case o.Log == "" && !o.Undo:
		return errors.New("no log: give options.log, the journal's log file (only an undo disk, undo: true, may go without)")
	case o.KeepPoints < 0:
		return fmt.Errorf("keep_points %d is negative", o.KeepPoints)
	case o.MaxExtents < 0:
		return fmt.Errorf("max_extents %d is negative", o.MaxExtents)
	}
	return nil
}

var kindJournal = &Kind{
	Name: "journal", MinChildren: 1, MaxChildren: 1,
	Check: func(n *Node, _ map[string]bool) error {
		var o JournalOptions
		if err := decodeOptions(n.Options, &o); err != nil {
			return err
		}
		return o.check()
	},
	Open: func(_ *Builder, n *Node, no NodeOptions, c []block.Backend) (block.Backend, error) {
		var o JournalOptions
		if err := decodeOptions(n.Options, &o); err != nil {
			return nil, err
		}
		if err := o.check(); err != nil {
			return nil, err
		}
		if o.Undo && no.ReadOnly {
			// Nothing is written, so there is nothing to undo: the
			// disk is its child.
			return c[0], nil
		}
		return journal.Open(c[0], o.Log, journal.Options{
			Undo: o.Undo, ReadOnly: no.ReadOnly, KeepPoints: o.KeepPoints,
			KeepAge: time.Duration(o.KeepAge), MaxLog: int64(o.MaxLog), MaxExtents: o.MaxExtents,
		})
	},
}

func init() { Register(kindJournal) }

// ScratchDirs lists the directories the graph's nodes make files in while
// they run, which a confined vio must be allowed to create files in: a
// journal's log directory (compaction writes LOG.compact and renames it
// over LOG) and, for an undo disk without a log, the system's temporary
// directory (its log is an unlinked temporary file, made afresh at every
// open and compaction).
func ScratchDirs(root *Node) []string {
	var dirs []string
	var walk func(n *Node)
	walk = func(n *Node) {
		if n == nil {
			return
		}
		if n.Kind == kindJournal.Name {
			var o JournalOptions
			if decodeOptions(n.Options, &o) == nil {
				switch {
				case o.Log != "":
					dirs = append(dirs, filepath.Dir(o.Log))
				case o.Undo:
					dirs = append(dirs, os.TempDir())
				}
			}
		}
		for _, c := range n.Children {
			walk(c)
		}
	}
	walk(root)
	return dirs
}
