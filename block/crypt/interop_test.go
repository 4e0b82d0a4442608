package crypt

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/block/raw"
)

// Interop with the real cryptsetup, both ways. Where the kernel has no
// device mapper (this project's build machines), the data path is checked
// against testdata/xts.py, OpenSSL's XTS with the volume key cryptsetup
// itself dumps: cryptsetup decides the key, an independent XTS decides
// the ciphertext, vio must agree with both.

func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: it is this test's oracle; run scripts/setup-host or apt-get install %s", name, pkg)
	}
	return p
}

func run(t *testing.T, stdin []byte, name string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

func mustRun(t *testing.T, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	out, err := run(t, stdin, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// dumpedKey asks cryptsetup for the volume key.
func dumpedKey(t *testing.T, img, keyFile string) []byte {
	t.Helper()
	out := mustRun(t, nil, "cryptsetup", "luksDump", "--dump-volume-key", "-q", "--key-file", keyFile, img)
	_, after, ok := strings.Cut(string(out), "MK dump:")
	if !ok {
		t.Fatalf("no MK dump in cryptsetup's output:\n%s", out)
	}
	key, err := hex.DecodeString(strings.Join(strings.Fields(after), ""))
	if err != nil {
		t.Fatalf("cryptsetup's key dump: %v", err)
	}
	return key
}

func pythonXTS(t *testing.T) {
	t.Helper()
	needTool(t, "python3", "python3-cryptography")
	if _, err := run(t, nil, "python3", "-c", "import cryptography.hazmat.primitives.ciphers"); err != nil {
		t.Fatalf("python3 has no cryptography module (the XTS oracle): apt-get install python3-cryptography: %v", err)
	}
}

// oracle decrypts (or encrypts into the image) n bytes of the data segment
// at segment offset off with testdata/xts.py.
func oracleDecrypt(t *testing.T, key []byte, ss int, img string, dataOff, off, n int64) []byte {
	t.Helper()
	return mustRun(t, nil, "python3", "testdata/xts.py", "dec", hex.EncodeToString(key), fmt.Sprint(ss), fmt.Sprint(off/512), img, fmt.Sprint(dataOff+off), fmt.Sprint(n))
}

func oracleEncrypt(t *testing.T, key []byte, ss int, img string, dataOff, off int64, plain []byte) {
	t.Helper()
	mustRun(t, plain, "python3", "testdata/xts.py", "enc", hex.EncodeToString(key), fmt.Sprint(ss), fmt.Sprint(off/512), img, fmt.Sprint(dataOff+off), fmt.Sprint(len(plain)))
}

var interopKDFs = map[string]KDFParams{
	"pbkdf2":   {Type: PBKDF2, Iterations: 1000},
	"argon2id": {Type: Argon2id, Time: 4, Memory: 32, CPUs: 1},
}

// TestCryptsetupReadsVio: images vio formats pass cryptsetup's luksDump and
// --test-passphrase, cryptsetup finds the volume key vio uses, the data vio
// wrote decrypts with that key in an independent XTS, and cryptsetup can
// add a keyslot that vio then opens with.
func TestCryptsetupReadsVio(t *testing.T) {
	needTool(t, "cryptsetup", "cryptsetup-bin")
	pythonXTS(t)
	for _, ss := range []int{512, 4096} {
		for kname, kdf := range interopKDFs {
			t.Run(fmt.Sprintf("sector%d/%s", ss, kname), func(t *testing.T) {
				dir := t.TempDir()
				img, keyFile := filepath.Join(dir, "vio.img"), filepath.Join(dir, "key")
				os.WriteFile(keyFile, testPass, 0o600)
				const dataSize = 256 << 10
				f, err := raw.Create(img, FormatDataOffset+dataSize, raw.Options{})
				if err != nil {
					t.Fatal(err)
				}
				if err := Format(f, testPass, FormatOptions{SectorSize: ss, KDF: kdf}); err != nil {
					t.Fatal(err)
				}
				d, err := OpenDisk(f, testPass, Options{})
				if err != nil {
					t.Fatal(err)
				}
				vioKey := append([]byte(nil), d.key...)
				plain := pattern(dataSize, 1)
				if _, err := d.WriteAt(plain, 0); err != nil {
					t.Fatal(err)
				}
				if err := d.Close(); err != nil {
					t.Fatal(err)
				}

				dump := string(mustRun(t, nil, "cryptsetup", "luksDump", img))
				for _, want := range []string{fmt.Sprintf("sector: %d [bytes]", ss), "PBKDF:      " + kname, "cipher: aes-xts-plain64"} {
					if !strings.Contains(dump, want) {
						t.Errorf("cryptsetup luksDump lacks %q:\n%s", want, dump)
					}
				}
				mustRun(t, nil, "cryptsetup", "open", "--test-passphrase", "--key-file", keyFile, img)
				os.WriteFile(filepath.Join(dir, "bad"), []byte("not it"), 0o600)
				if _, err := run(t, nil, "cryptsetup", "open", "--test-passphrase", "--key-file", filepath.Join(dir, "bad"), img); err == nil {
					t.Fatal("cryptsetup accepted a wrong passphrase: the oracle proves nothing")
				}
				if got := dumpedKey(t, img, keyFile); !bytes.Equal(got, vioKey) {
					t.Fatal("cryptsetup unlocks a different volume key than vio's")
				}
				if got := oracleDecrypt(t, vioKey, ss, img, FormatDataOffset, 0, dataSize); !bytes.Equal(got, plain) {
					t.Fatal("the independent XTS decrypts vio's data to something else")
				}
				image, _ := os.ReadFile(img)
				if err := noPlaintextIn(image, plain); err != nil {
					t.Fatal(err)
				}

				// cryptsetup rewrites vio's header; vio reads it back.
				os.WriteFile(filepath.Join(dir, "new"), []byte("added by cryptsetup"), 0o600)
				mustRun(t, nil, "cryptsetup", "luksAddKey", "-q", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
					"--key-file", keyFile, img, filepath.Join(dir, "new"))
				f, err = raw.Open(img, raw.Options{})
				if err != nil {
					t.Fatal(err)
				}
				b, err := Open(f, []byte("added by cryptsetup"), Options{})
				if err != nil {
					f.Close()
					t.Fatalf("vio cannot open with the keyslot cryptsetup added: %v", err)
				}
				got := make([]byte, dataSize)
				if _, err := b.ReadAt(got, 0); err != nil || !bytes.Equal(got, plain) {
					t.Errorf("after cryptsetup's luksAddKey vio reads other data (%v)", err)
				}
				b.Close()
			})
		}
	}
}

// TestVioReadsCryptsetup: images cryptsetup luksFormat makes open in vio
// with the volume key cryptsetup dumps; data encrypted outside vio reads
// back through vio, and data vio writes (at odd offsets) decrypts outside.
func TestVioReadsCryptsetup(t *testing.T) {
	needTool(t, "cryptsetup", "cryptsetup-bin")
	pythonXTS(t)
	kdfArgs := map[string][]string{
		"pbkdf2":   {"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"},
		"argon2id": {"--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32", "--pbkdf-parallel", "1"},
	}
	for _, ss := range []int{512, 4096} {
		for kname, args := range kdfArgs {
			t.Run(fmt.Sprintf("sector%d/%s", ss, kname), func(t *testing.T) {
				dir := t.TempDir()
				img, keyFile := filepath.Join(dir, "cs.img"), filepath.Join(dir, "key")
				os.WriteFile(keyFile, testPass, 0o600)
				const dataSize = 256 << 10
				if err := os.WriteFile(img, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				os.Truncate(img, FormatDataOffset+dataSize)
				mustRun(t, nil, "cryptsetup", append(append([]string{"luksFormat", "-q", "--type", "luks2", "--sector-size", fmt.Sprint(ss)}, args...), "--key-file", keyFile, img)...)
				key := dumpedKey(t, img, keyFile)

				plain := pattern(dataSize, 2)
				oracleEncrypt(t, key, ss, img, FormatDataOffset, 0, plain)

				f, err := raw.Open(img, raw.Options{})
				if err != nil {
					t.Fatal(err)
				}
				d, err := OpenDisk(f, testPass, Options{})
				if err != nil {
					f.Close()
					t.Fatal(err)
				}
				if !bytes.Equal(d.key, key) {
					t.Fatal("vio unlocks a different volume key than cryptsetup dumps")
				}
				if d.SectorSize() != ss || d.Size() != dataSize {
					t.Errorf("sector %d, size %d; want %d, %d", d.SectorSize(), d.Size(), ss, dataSize)
				}
				got := make([]byte, dataSize)
				if _, err := d.ReadAt(got, 0); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, plain) {
					t.Fatal("vio reads other data than the independent XTS wrote")
				}
				model := plain
				for i, w := range []struct{ off, n int }{{3, 700}, {4096*3 + 5, 10000}, {dataSize - 17, 17}} {
					p := pattern(w.n, byte(10+i))
					copy(model[w.off:], p)
					if _, err := d.WriteAt(p, int64(w.off)); err != nil {
						t.Fatal(err)
					}
				}
				if err := d.Close(); err != nil {
					t.Fatal(err)
				}
				if got := oracleDecrypt(t, key, ss, img, FormatDataOffset, 0, dataSize); !bytes.Equal(got, model) {
					t.Fatal("the independent XTS decrypts vio's writes to something else")
				}
				mustRun(t, nil, "cryptsetup", "open", "--test-passphrase", "--key-file", keyFile, img)
			})
		}
	}
}
