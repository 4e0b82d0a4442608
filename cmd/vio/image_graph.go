package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/viovmm/vio/block/graph"
)

// graphInfo is `vio image info --graph FILE`: the disk graph in FILE, each
// leaf described as `vio image info` describes an image.
func graphInfo(cmd *cobra.Command, file, output string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("graph file: %w", err)
	}
	root, err := graph.Parse(data)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	allow, _ := cmd.Flags().GetBool("allow-backing")
	in, err := graph.Describe(root, allow)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "    ")
		return enc.Encode(in)
	}
	in.Print(w)
	return nil
}
