package loadertest

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os/exec"

	"github.com/viovmm/vio/loader"
)

// ErrUnsupported reports a bzImage whose payload Vmlinux cannot unpack.
var ErrUnsupported = errors.New("loadertest: payload compression not supported")

// Vmlinux unpacks the ELF vmlinux inside a bzImage, as the kernel's
// scripts/extract-vmlinux does: gzip in Go, xz with the host's xz tool.
// Tests use it to boot a distribution kernel without running its
// decompressor, which is slow under software virtualisation.
func Vmlinux(img []byte) ([]byte, error) {
	k, err := loader.Parse(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		return nil, err
	}
	h := k.Header
	start := h.SetupSize() + int64(h.PayloadOffset)
	end := start + int64(h.PayloadLength)
	if h.PayloadLength < 6 || end > int64(len(img)) {
		return nil, fmt.Errorf("loadertest: payload %#x+%#x outside the image", start, h.PayloadLength)
	}
	payload := img[start:end]
	switch {
	case bytes.HasPrefix(payload, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return nil, err
		}
		zr.Multistream(false) // the kernel's size trailer follows the stream
		return io.ReadAll(zr)
	case bytes.HasPrefix(payload, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		if _, err := exec.LookPath("xz"); err != nil {
			return nil, fmt.Errorf("%w: xz payload and no xz tool", ErrUnsupported)
		}
		cmd := exec.Command("xz", "-dc", "--single-stream")
		cmd.Stdin = bytes.NewReader(payload)
		out, err := cmd.Output()
		if len(out) == 0 {
			return nil, fmt.Errorf("loadertest: xz: %w", err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: payload starts % x", ErrUnsupported, payload[:4])
}
