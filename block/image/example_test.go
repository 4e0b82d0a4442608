package image_test

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/viovmm/vio/block/image"
)

// Create a qcow2 overlay on a raw base image and write through it; the
// base stays untouched.
func Example() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	base := filepath.Join(dir, "base.raw")
	top := filepath.Join(dir, "top.qcow2")
	size, _ := image.ParseSize("64M")
	if err := image.Create(base, image.CreateOptions{Format: image.Raw, Size: size}); err != nil {
		fmt.Println(err)
		return
	}
	if err := image.Create(top, image.CreateOptions{BackingFile: "base.raw", Size: -1}); err != nil {
		fmt.Println(err)
		return
	}
	disk, err := image.Open(top, image.OpenOptions{Lock: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	disk.WriteAt([]byte("hello"), 1<<20)
	disk.Close()
	info, _ := image.GetInfo(top, image.ToolOptions{})
	fmt.Println(info.Format, info.VirtualSize, info.BackingFile, info.BackingFormat)
	// Output: qcow2 67108864 base.raw raw
}
