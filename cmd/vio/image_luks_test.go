package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/block/crypt"
	"github.com/viovmm/vio/block/image"
)

// TestImageLuksCLI walks an encrypted image through create, add-key,
// remove-key and dump, raw and qcow2, and checks each step from outside:
// the passphrases that should open it do (cryptsetup agrees for the raw
// image), the removed one does not.
func TestImageLuksCLI(t *testing.T) {
	dir := t.TempDir()
	k1, k2 := filepath.Join(dir, "k1"), filepath.Join(dir, "k2")
	os.WriteFile(k1, []byte("first"), 0o600)
	t.Setenv("VIO_TEST_K2", "second")
	os.WriteFile(k2, []byte("second"), 0o600)
	fast := []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"}
	for _, format := range []string{"raw", "qcow2"} {
		img := filepath.Join(dir, "enc."+format)
		steps := [][]string{
			append([]string{"create", "-f", format, "--encrypt", "--sector-size", "512", "--key-file", k1, img, "4M"}, fast...),
			append([]string{"luks", "add-key", "-f", format, img, "--key-file", k1, "--new-key-env", "VIO_TEST_K2"}, fast...),
			{"luks", "remove-key", "-f", format, img, "--key-file", k1},
		}
		for _, s := range steps {
			if out, err := runImage(t, s...); err != nil {
				t.Fatalf("vio image %s: %v\n%s", strings.Join(s, " "), err, out)
			}
		}
		out, err := runImage(t, "luks", "dump", "-f", format, img)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "sector: 512 [bytes]") || !strings.Contains(out, "  1: luks2") || strings.Contains(out, "  0: luks2") {
			t.Errorf("dump after add-key and remove-key of slot 0:\n%s", out)
		}
		be, err := image.Open(img, image.OpenOptions{Format: format})
		if err != nil {
			t.Fatal(err)
		}
		if be.Size() != 4<<20+crypt.FormatDataOffset {
			t.Errorf("image size %d, want 4 MiB of data plus the header", be.Size())
		}
		if _, err := crypt.Open(be, []byte("first"), crypt.Options{}); err == nil {
			t.Error("the removed passphrase still opens the image")
		}
		d, err := crypt.Open(be, []byte("second"), crypt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		d.Close()
		if format == "raw" {
			if _, err := exec.LookPath("cryptsetup"); err != nil {
				t.Fatal("cryptsetup is not installed (the oracle of this test): run scripts/setup-host")
			}
			if out, err := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-file", k2, img).CombinedOutput(); err != nil {
				t.Errorf("cryptsetup refuses the passphrase vio added: %v\n%s", err, out)
			}
		}
		// The last keyslot stays unless forced.
		if _, err := runImage(t, "luks", "remove-key", "-f", format, img, "--key-file", k2); err == nil || !strings.Contains(err.Error(), "--force") {
			t.Errorf("removing the last keyslot: %v", err)
		}
	}
	// Refusals: no key, a key on the command line, an existing file.
	img := filepath.Join(dir, "enc.raw")
	for args, want := range map[string]string{
		"create --encrypt " + filepath.Join(dir, "x.img") + " 4M":                  "no key",
		"create --encrypt --key-file " + k1 + " " + img + " 4M":                    "exists",
		"create --encrypt --passphrase x " + filepath.Join(dir, "y.img") + " 4M":   "unknown flag",
		"create --encrypt --key-file " + k1 + " " + filepath.Join(dir, "z") + " 5": "sectors",
	} {
		out, err := runImage(t, strings.Fields(args)...)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("vio image %s: %v, want %q\n%s", args, err, want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "z")); err == nil {
		t.Error("a failed create left its file behind")
	}
}
