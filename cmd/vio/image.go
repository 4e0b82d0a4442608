package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/qcow2"
)

// `vio image` is vio's qemu-img: it creates, inspects, checks, converts,
// resizes and snapshots disk images. The work is done by package
// block/image; this file parses flags and prints.
//
// Exporting an image over NBD (`vio image serve --nbd`) belongs to the
// NBD back-end: it registers itself by appending to imageSubcommands from
// its own file's init().

// toolOptions reads the flags every verb that reads an image shares: the
// image's format (-f, probed when empty) and --allow-backing.
func toolOptions(cmd *cobra.Command, format string) (image.ToolOptions, error) {
	allow, _ := cmd.Flags().GetBool("allow-backing")
	if format != "" {
		if err := image.CheckFormat(format); err != nil {
			return image.ToolOptions{}, err
		}
	}
	return image.ToolOptions{Format: format, AllowBacking: allow}, nil
}

// imageSubcommands holds the verbs under `vio image`.
var imageSubcommands []func() *cobra.Command

func init() { subcommands = append(subcommands, imageCommand) }

func imageCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "image",
		Short: "Create, inspect, check, convert, resize and snapshot disk images (raw, qcow2)",
	}
	c.PersistentFlags().Bool("allow-backing", false,
		"follow backing files named by absolute path, with \"..\" or as NBD URIs (only for images whose headers you trust)")
	c.AddCommand(imageCreateCommand(), imageInfoCommand(), imageCheckCommand(),
		imageConvertCommand(), imageResizeCommand(), imageSnapshotCommand())
	for _, f := range imageSubcommands {
		c.AddCommand(f())
	}
	return c
}

func imageCreateCommand() *cobra.Command {
	var format, backing, backingFormat, compat string
	var clusterSize string
	var refcountBits int
	c := &cobra.Command{
		Use:   "create [-f raw|qcow2] [-b BACKING [-F FMT]] FILE [SIZE]",
		Short: "Create a disk image (SIZE like 10G; with -b it defaults to the backing file's size)",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			size := int64(-1)
			if len(args) == 2 {
				var err error
				if size, err = image.ParseSize(args[1]); err != nil {
					return err
				}
			} else if backing == "" {
				return errors.New("a size is needed, e.g. vio image create disk.qcow2 10G")
			}
			if backingFormat != "" {
				if err := image.CheckFormat(backingFormat); err != nil {
					return err
				}
			}
			cs := int64(0)
			if clusterSize != "" {
				var err error
				if cs, err = image.ParseSize(clusterSize); err != nil {
					return fmt.Errorf("cluster size: %w", err)
				}
			}
			allow, _ := cmd.Flags().GetBool("allow-backing")
			o := image.CreateOptions{
				Format: format, Size: size, BackingFile: backing, BackingFormat: backingFormat, AllowBacking: allow,
				ClusterSize: int(cs), Compat: compat, RefcountBits: refcountBits,
			}
			if encryptRequested(cmd) {
				return createEncrypted(cmd, args[0], o) // image_luks.go
			}
			return image.Create(args[0], o)
		},
	}
	addEncryptFlags(c)
	c.Flags().StringVarP(&format, "format", "f", "qcow2", "image format: raw or qcow2")
	c.Flags().StringVarP(&backing, "backing", "b", "", "backing file (qcow2; a relative name is relative to FILE's directory)")
	c.Flags().StringVarP(&backingFormat, "backing-format", "F", "", "backing file format (probed if not given)")
	c.Flags().StringVar(&clusterSize, "cluster-size", "", "qcow2 cluster size (512 to 2M, default 64K)")
	c.Flags().StringVar(&compat, "compat", "", "qcow2 version: 1.1 (default) or 0.10")
	c.Flags().IntVar(&refcountBits, "refcount-bits", 0, "qcow2 refcount width (default 16)")
	return c
}

func imageInfoCommand() *cobra.Command {
	var output, format string
	var isGraph bool
	c := &cobra.Command{
		Use:   "info [-f raw|qcow2] [--graph] [--output=human|json] FILE",
		Short: "Describe a disk image (or, with --graph, a disk graph in a JSON file)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "human" && output != "json" {
				return fmt.Errorf("unknown output format %q (want human or json)", output)
			}
			if isGraph {
				return graphInfo(cmd, args[0], output)
			}
			o, err := toolOptions(cmd, format)
			if err != nil {
				return err
			}
			in, err := image.GetInfo(args[0], o)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "    ")
				return enc.Encode(in)
			}
			printInfo(w, in)
			return nil
		},
	}
	c.Flags().StringVar(&output, "output", "human", "human or json")
	c.Flags().StringVarP(&format, "format", "f", "", "image format: raw or qcow2 (probed if not given)")
	c.Flags().BoolVar(&isGraph, "graph", false, "FILE is a disk graph (JSON, as a disk's \"graph\" in a VM config)")
	return c
}

func printInfo(w io.Writer, in *image.Info) {
	fmt.Fprintf(w, "image: %s\nfile format: %s\n", in.Filename, in.Format)
	fmt.Fprintf(w, "virtual size: %s (%d bytes)\n", humanSize(in.VirtualSize), in.VirtualSize)
	fmt.Fprintf(w, "disk size: %s\n", humanSize(in.ActualSize))
	if in.ClusterSize != 0 {
		fmt.Fprintf(w, "cluster_size: %d\n", in.ClusterSize)
	}
	if in.BackingFile != "" {
		fmt.Fprintf(w, "backing file: %s", in.BackingFile)
		if in.FullBacking != in.BackingFile {
			fmt.Fprintf(w, " (actual path: %s)", in.FullBacking)
		}
		fmt.Fprintln(w)
		if in.BackingFormat != "" {
			fmt.Fprintf(w, "backing file format: %s\n", in.BackingFormat)
		}
	}
	if len(in.Snapshots) > 0 {
		fmt.Fprintln(w, "Snapshot list:")
		printSnapshots(w, in.Snapshots)
	}
	if s := in.Specific; s != nil {
		fmt.Fprintf(w, "Format specific information:\n    compat: %s\n    lazy refcounts: %v\n    refcount bits: %d\n    corrupt: %v\n",
			s.Data.Compat, s.Data.LazyRefcounts, s.Data.RefcountBits, s.Data.Corrupt)
	}
}

func printSnapshots(w io.Writer, snaps []image.SnapshotInfo) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTAG\tVM SIZE\tDATE\tVM CLOCK")
	for _, s := range snaps {
		clock := time.Duration(s.VMClockSec)*time.Second + time.Duration(s.VMClockNsec)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.ID, s.Name, humanSize(int64(s.VMStateSize)),
			time.Unix(s.DateSec, s.DateNsec).Format("2006-01-02 15:04:05"), clock)
	}
	tw.Flush()
}

// humanSize prints sizes as qemu-img does (binary units).
func humanSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(n)
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	s := fmt.Sprintf("%.3g", v)
	return s + " " + units[i]
}

func imageCheckCommand() *cobra.Command {
	var repair, format string
	c := &cobra.Command{
		Use:   "check [-f raw|qcow2] [-r leaks|all] FILE",
		Short: "Check (and repair) a disk image's metadata (exit 2: corrupt, 3: leaked clusters only)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			mode := qcow2.RepairNone
			switch repair {
			case "":
			case "leaks":
				mode = qcow2.RepairLeaks
			case "all":
				mode = qcow2.RepairAll
			default:
				return fmt.Errorf("unknown repair mode %q (want leaks or all)", repair)
			}
			o, err := toolOptions(cmd, format)
			if err != nil {
				return err
			}
			res, format, err := image.Repair(args[0], mode, o)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if format == image.Raw {
				fmt.Fprintf(w, "%s is a raw image: there is no metadata to check.\n", args[0])
				return nil
			}
			for _, p := range res.Problems {
				fmt.Fprintln(w, p)
			}
			if res.Repaired > 0 {
				fmt.Fprintf(w, "%d problems were repaired.\n", res.Repaired)
			}
			switch {
			case res.Corruptions > 0:
				fmt.Fprintf(w, "%d errors were found on the image; data may be corrupted (repair with qemu-img check -r all).\n", res.Corruptions)
			case res.Leaks > 0:
				fmt.Fprintf(w, "%d leaked clusters were found on the image: wasted space, no harm to data.\n", res.Leaks)
			default:
				fmt.Fprintln(w, "No errors were found on the image.")
			}
			if res.TotalClusters > 0 {
				fmt.Fprintf(w, "%d/%d = %.2f%% allocated\n", res.AllocatedClusters, res.TotalClusters,
					100*float64(res.AllocatedClusters)/float64(res.TotalClusters))
			}
			// qemu-img's exit statuses, which scripts test; the verdict is
			// already printed, so the error carries no message.
			switch {
			case res.Corruptions > 0:
				return exitError{code: 2}
			case res.Leaks > 0:
				return exitError{code: 3}
			}
			return nil
		},
	}
	c.Flags().StringVarP(&format, "format", "f", "", "image format: raw or qcow2 (probed if not given)")
	c.Flags().StringVarP(&repair, "repair", "r", "", "repair: leaks (drop leaked refcounts) or all (also raise low refcounts, fix copied flags)")
	return c
}

func imageConvertCommand() *cobra.Command {
	var format, srcFormat, clusterSize string
	var progress bool
	c := &cobra.Command{
		Use:   "convert [-f raw|qcow2] [-O raw|qcow2] SRC DST",
		Short: "Copy an image (with its backing chain) into a new standalone image",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := image.CheckFormat(format); err != nil {
				return err
			}
			src, err := toolOptions(cmd, srcFormat)
			if err != nil {
				return err
			}
			opts := image.ConvertOptions{Format: format, Source: src}
			if clusterSize != "" {
				cs, err := image.ParseSize(clusterSize)
				if err != nil {
					return fmt.Errorf("cluster size: %w", err)
				}
				opts.ClusterSize = int(cs)
			}
			// A progress bar only where someone watches it.
			if progress || imageIsTerminal(os.Stderr) {
				if imageIsTerminal(os.Stderr) {
					opts.Progress = progressBar(os.Stderr)
				}
			}
			err = image.Convert(args[0], args[1], opts)
			if opts.Progress != nil {
				fmt.Fprintln(os.Stderr)
			}
			return err
		},
	}
	c.Flags().StringVarP(&format, "output-format", "O", "qcow2", "destination format: raw or qcow2")
	c.Flags().StringVarP(&srcFormat, "format", "f", "", "source format: raw or qcow2 (probed if not given)")
	c.Flags().StringVar(&clusterSize, "cluster-size", "", "qcow2 destination cluster size")
	c.Flags().BoolVarP(&progress, "progress", "p", false, "show progress (on a terminal, it is shown anyway)")
	return c
}

func imageIsTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progressBar redraws one line on a terminal, at most every 100 ms.
func progressBar(w io.Writer) func(done, total int64) {
	var last time.Time
	return func(done, total int64) {
		if time.Since(last) < 100*time.Millisecond && done < total {
			return
		}
		last = time.Now()
		frac := 1.0
		if total > 0 {
			frac = float64(done) / float64(total)
		}
		const width = 40
		n := int(frac * width)
		fmt.Fprintf(w, "\r    (%6.2f/100%%) [%s%s]", 100*frac, strings.Repeat("#", n), strings.Repeat(" ", width-n))
	}
}

func imageResizeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "resize FILE [+]SIZE",
		Short: "Grow (or, for raw images, shrink) an image; +SIZE grows by SIZE",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			arg := args[1]
			rel := strings.HasPrefix(arg, "+")
			size, err := image.ParseSize(strings.TrimPrefix(arg, "+"))
			if err != nil {
				return err
			}
			if rel {
				o, err := toolOptions(cmd, "")
				if err != nil {
					return err
				}
				in, err := image.GetInfo(args[0], o)
				if err != nil {
					return err
				}
				size += in.VirtualSize
			}
			if err := image.Resize(args[0], size); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Image resized.")
			return nil
		},
	}
}

func imageSnapshotCommand() *cobra.Command {
	var create, apply, del string
	var list bool
	c := &cobra.Command{
		Use:   "snapshot [-l | -c NAME | -a NAME | -d NAME] FILE",
		Short: "List, create, apply or delete internal snapshots of a qcow2 image",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n := 0
			for _, set := range []bool{list, create != "", apply != "", del != ""} {
				if set {
					n++
				}
			}
			if n != 1 {
				return errors.New("give exactly one of -l, -c NAME, -a NAME, -d NAME")
			}
			switch {
			case create != "":
				return image.SnapshotOp(args[0], image.SnapshotCreate, create)
			case apply != "":
				return image.SnapshotOp(args[0], image.SnapshotApply, apply)
			case del != "":
				return image.SnapshotOp(args[0], image.SnapshotDelete, del)
			}
			o, err := toolOptions(cmd, "")
			if err != nil {
				return err
			}
			in, err := image.GetInfo(args[0], o)
			if err != nil {
				return err
			}
			if in.Format != image.Qcow2 {
				return fmt.Errorf("%s is a raw image: only qcow2 images have snapshots", args[0])
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Snapshot list:")
			printSnapshots(cmd.OutOrStdout(), in.Snapshots)
			return nil
		},
	}
	c.Flags().BoolVarP(&list, "list", "l", false, "list snapshots")
	c.Flags().StringVarP(&create, "create", "c", "", "create a snapshot")
	c.Flags().StringVarP(&apply, "apply", "a", "", "revert the disk to a snapshot")
	c.Flags().StringVarP(&del, "delete", "d", "", "delete a snapshot")
	return c
}
