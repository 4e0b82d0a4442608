package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/journal"
)

// `vio image journal VERB BASE LOG ...` runs a journal's operations (list,
// mark, revert, commit, compact; package block/journal) on a disk that is
// not in use: the base image is locked as every image verb locks it, and
// the log as the journal locks it, so a running VM's disk is refused.

func init() { imageSubcommands = append(imageSubcommands, imageJournalCommand) }

func imageJournalCommand() *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "journal list|mark|revert|commit|compact BASE LOG ...",
		Short: "List, mark, revert, commit or compact a journalled disk's history (the disk must not be in use)",
		Long: `Operate on a journalled disk (a graph node of kind journal, docs/journal.md):
BASE is the image under the journal, LOG its log file. A point is named by
its mark or its id (see list); the VM using the disk must be stopped.`,
	}
	c.PersistentFlags().StringVarP(&format, "format", "f", "", "format of BASE (raw or qcow2; probed when not given)")
	verb := func(use, short string, args cobra.PositionalArgs, writeBase, readOnly bool, run func(cmd *cobra.Command, j *journal.Journal, rest []string) error) *cobra.Command {
		return &cobra.Command{
			Use: use, Short: short, Args: args,
			RunE: func(cmd *cobra.Command, args []string) (err error) {
				j, err := openJournalTool(cmd, format, args[0], args[1], writeBase, readOnly)
				if err != nil {
					return err
				}
				defer func() {
					if cerr := j.Close(); cerr != nil && err == nil {
						err = cerr
					}
				}()
				return run(cmd, j, args[2:])
			},
		}
	}
	list := verb("list [-o json] BASE LOG", "List the points of the history, base first", cobra.ExactArgs(2), false, true,
		func(cmd *cobra.Command, j *journal.Journal, _ []string) error {
			st, err := j.List()
			if err != nil {
				return err
			}
			out, _ := cmd.Flags().GetString("output")
			if out == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "    ")
				return enc.Encode(st)
			}
			printJournal(cmd.OutOrStdout(), st)
			return nil
		})
	list.Flags().StringP("output", "o", "human", "output format: human or json")
	c.AddCommand(list,
		verb("mark BASE LOG NAME", "Name the disk's current state", cobra.ExactArgs(3), false, false,
			func(cmd *cobra.Command, j *journal.Journal, rest []string) error {
				p, err := j.Mark(rest[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Marked point %d as %s.\n", p.ID, p.Name)
				return nil
			}),
		verb("revert BASE LOG POINT", "Take the disk back (or forward) to a point of its history", cobra.ExactArgs(3), false, false,
			func(cmd *cobra.Command, j *journal.Journal, rest []string) error {
				if err := j.Revert(rest[0]); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "The disk is at point %s.\n", rest[0])
				return nil
			}),
		verb("commit BASE LOG [POINT]", "Copy the history up to a point (default: the current one) into BASE", cobra.RangeArgs(2, 3), true, false,
			func(cmd *cobra.Command, j *journal.Journal, rest []string) error {
				p := ""
				if len(rest) > 0 {
					p = rest[0]
				}
				if err := j.Commit(p); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "Committed into the base.")
				return nil
			}),
		verb("compact BASE LOG", "Rewrite the log without what no point needs", cobra.ExactArgs(2), false, false,
			func(cmd *cobra.Command, j *journal.Journal, _ []string) error {
				before, _ := j.List()
				if err := j.Compact(); err != nil {
					return err
				}
				after, _ := j.List()
				fmt.Fprintf(cmd.OutOrStdout(), "Log compacted from %d to %d bytes.\n", before.LogBytes, after.LogBytes)
				return nil
			}),
	)
	return c
}

// openJournalTool opens BASE (locked; writable only for a commit) and the
// journal on it.
func openJournalTool(cmd *cobra.Command, format, base, log string, writeBase, readOnly bool) (*journal.Journal, error) {
	o, err := toolOptions(cmd, format)
	if err != nil {
		return nil, err
	}
	// A mistyped LOG must not become a new, empty journal.
	if _, err := os.Stat(log); err != nil {
		return nil, fmt.Errorf("journal log %s: %w (the log is made when a VM first opens the journalled disk)", log, err)
	}
	b, err := image.Open(base, image.OpenOptions{Format: o.Format, ReadOnly: !writeBase, Lock: true, AllowBacking: o.AllowBacking})
	if err != nil {
		return nil, err
	}
	j, err := journal.OpenJournal(b, log, journal.Options{ReadOnly: readOnly})
	if err != nil {
		b.Close()
		return nil, err
	}
	return j, nil
}

func printJournal(w io.Writer, st journal.Status) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tTIME\tBYTES\t")
	for _, p := range st.Points {
		t := "-"
		if !p.Time.IsZero() {
			t = p.Time.Local().Format(time.DateTime)
		}
		var flags string
		if p.Base {
			flags = "(base)"
		}
		if p.Current {
			flags += " <- current"
			if st.Pending {
				flags += " (+ unflushed writes)"
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\n", p.ID, p.Name, t, p.Bytes, flags)
	}
	tw.Flush()
	fmt.Fprintf(w, "log: %d bytes, about %d of them live\n", st.LogBytes, st.LiveBytes)
}
