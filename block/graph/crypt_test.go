package graph

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/block/crypt"
	"github.com/viovmm/vio/block/image"
)

// mkcrypt makes an image of format with a LUKS2 volume of dataSize bytes
// in it, opened by pass.
func mkcrypt(t *testing.T, dir, name, format string, dataSize int64, pass string) string {
	t.Helper()
	p := mkimage(t, dir, name, format, crypt.FormatDataOffset+dataSize)
	be, err := image.Open(p, image.OpenOptions{Format: format})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	if err := crypt.Format(be, []byte(pass), crypt.FormatOptions{KDF: crypt.KDFParams{Type: crypt.PBKDF2, Iterations: 1000}}); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCryptRefusals(t *testing.T) {
	leaf := `"children":[{"node":"raw","path":"a"}]`
	for opts, want := range map[string]string{
		``:                            "no key",
		`,"options":{"discard":true}`: "no key",
		`,"options":{"key_file":"k","key_env":"K"}`: "exactly one",
		`,"options":{"passphrase":"hunter2"}`:       "a passphrase in the configuration is refused",
		`,"options":{"key_env":"A-B"}`:              "not a valid name",
		`,"options":{"key_fd":-1}`:                  "negative",
		`,"options":{"key":"x"}`:                    `unknown field "key"`,
	} {
		err := Validate([]Disk{{ID: "d0", Root: mustParse(t, `{"node":"crypt"`+opts+`,`+leaf+`}`)}}, nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("options %s: %v, want %q", opts, err, want)
		}
	}
}

// TestCryptBuild opens an encrypted raw and an encrypted qcow2 image
// through graphs, with the key from a file, the environment and a pipe,
// and reads back what was written through the other graph.
func TestCryptBuild(t *testing.T) {
	dir := t.TempDir()
	const pass = "graph passphrase"
	r := mkcrypt(t, dir, "r.img", image.Raw, 1<<20, pass)
	q := mkcrypt(t, dir, "q.qcow2", image.Qcow2, 1<<20, pass)
	keyFile := filepath.Join(dir, "key")
	os.WriteFile(keyFile, []byte(pass), 0o600)
	t.Setenv("VIO_TEST_KEY", pass)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	pw.Write([]byte(pass))
	pw.Close()
	defer pr.Close()

	open := func(leaf, path, opts string) (func() error, error) {
		b := NewBuilder(Options{Lock: true})
		be, err := b.Open(Disk{ID: "d0", Root: mustParse(t, `{"node":"crypt","options":`+opts+`,"children":[{"node":"`+leaf+`","path":"`+path+`"}]}`)})
		if err != nil {
			return nil, err
		}
		p := bytes.Repeat([]byte(leaf), 1000)
		got := make([]byte, len(p))
		if be.Size() != 1<<20 {
			t.Errorf("%s: size %d", leaf, be.Size())
		}
		return func() error {
			defer be.Close()
			if _, err := be.ReadAt(got, 777); err != nil {
				return err
			}
			if !bytes.Equal(got, p) && !bytes.Equal(got, make([]byte, len(p))) {
				return errors.New("read neither the pattern nor zeroes")
			}
			_, err := be.WriteAt(p, 777)
			return err
		}, nil
	}
	for _, img := range []struct{ leaf, path string }{{"raw", r}, {"qcow2", q}} {
		for _, opts := range []string{`{"key_file":"` + keyFile + `"}`, `{"key_env":"VIO_TEST_KEY"}`, fmt.Sprintf(`{"key_fd":%d}`, pr.Fd()), fmt.Sprintf(`{"key_fd":%d}`, pr.Fd())} {
			use, err := open(img.leaf, img.path, opts)
			if err != nil {
				t.Fatalf("%s %s: %v", img.leaf, opts, err)
			}
			if err := use(); err != nil {
				t.Fatalf("%s %s: %v", img.leaf, opts, err)
			}
		}
		// The data is really there, and encrypted: the plaintext is not
		// in the image file.
		raw, _ := os.ReadFile(img.path)
		if bytes.Contains(raw, bytes.Repeat([]byte(img.leaf), 100)) {
			t.Errorf("%s: plaintext found in the image", img.leaf)
		}
		b := NewBuilder(Options{Lock: true})
		be, err := b.Open(Disk{ID: "d0", Root: mustParse(t, `{"node":"crypt","options":{"key_file":"`+keyFile+`"},"children":[{"node":"`+img.leaf+`","path":"`+img.path+`"}]}`)})
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 3000)
		be.ReadAt(got, 777)
		be.Close()
		if !bytes.Equal(got, bytes.Repeat([]byte(img.leaf), 1000)[:3000]) {
			t.Errorf("%s: data written through the graph does not read back", img.leaf)
		}
	}
	os.WriteFile(keyFile, []byte("wrong"), 0o600)
	if _, err := open("raw", r, `{"key_file":"`+keyFile+`"}`); !errors.Is(err, crypt.ErrPassphrase) {
		t.Errorf("a wrong key: %v", err)
	}
	if _, err := open("raw", r, `{"key_env":"VIO_UNSET_KEY"}`); err == nil || !strings.Contains(err.Error(), "not set") {
		t.Errorf("an unset variable: %v", err)
	}
}
