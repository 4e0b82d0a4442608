package initramfs

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Builder collects the contents of an initramfs. Paths inside the image are
// absolute ("/bin/sh"); parent directories are created as needed. Adding the
// same path twice keeps the last content.
type Builder struct {
	entries map[string]entry
	modules []string // in load order, image paths
	err     error    // first error; reported by Write
}

type entry struct {
	mode uint32
	data []byte
}

// New returns a Builder holding the skeleton every lab guest needs.
func New() *Builder {
	b := &Builder{entries: map[string]entry{}}
	for _, d := range []string{"/dev", "/proc", "/sys", "/tmp", "/run", "/mnt", "/root", "/etc", "/bin", "/sbin", "/usr/bin", "/usr/sbin"} {
		b.Dir(d)
	}
	return b
}

func (b *Builder) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

// Dir adds a directory and its parents.
func (b *Builder) Dir(p string) {
	p = path.Clean("/" + p)
	for ; p != "/"; p = path.Dir(p) {
		if _, ok := b.entries[p]; !ok {
			b.entries[p] = entry{mode: modeDir | 0o755}
		}
	}
}

// File adds a regular file with the given permission bits.
func (b *Builder) File(p string, data []byte, perm os.FileMode) {
	p = path.Clean("/" + p)
	b.Dir(path.Dir(p))
	b.entries[p] = entry{mode: modeFile | uint32(perm.Perm()), data: data}
}

// Symlink adds a symbolic link p -> target.
func (b *Builder) Symlink(p, target string) {
	p = path.Clean("/" + p)
	b.Dir(path.Dir(p))
	b.entries[p] = entry{mode: modeSymlink | 0o777, data: []byte(target)}
}

// Copy adds the host file src at p, following symlinks, keeping its mode.
func (b *Builder) Copy(p, src string) {
	data, err := os.ReadFile(src)
	if err != nil {
		b.fail(fmt.Errorf("initramfs: %w", err))
		return
	}
	st, err := os.Stat(src)
	if err != nil {
		b.fail(err)
		return
	}
	b.File(p, data, st.Mode())
}

// Busybox adds a static busybox at /bin/busybox and a link for each applet
// it has, unless something else already occupies that path.
func (b *Builder) Busybox(src string) {
	b.Copy("/bin/busybox", src)
	out, err := exec.Command(src, "--list-full").Output()
	if err != nil {
		b.fail(fmt.Errorf("initramfs: listing busybox applets: %w", err))
		return
	}
	for _, a := range strings.Fields(string(out)) {
		if _, taken := b.entries["/"+a]; !taken {
			b.Symlink("/"+a, "/bin/busybox")
		}
	}
}

// Modules adds the named kernel modules and their dependencies; the init
// wrapper loads them, in dependency order, before the program runs.
func (b *Builder) Modules(m *Modules, names ...string) {
	files, err := m.Resolve(names...)
	if err != nil {
		b.fail(fmt.Errorf("initramfs: %w", err))
		return
	}
	for _, rel := range files {
		img := "/lib/modules/" + filepath.ToSlash(rel)
		if _, dup := b.entries[img]; !dup {
			b.modules = append(b.modules, img)
		}
		b.Copy(img, filepath.Join(m.Dir(), rel))
	}
}

// libDirs is where the dynamic loader of a Debian amd64 system looks.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// Executable adds the host program src at p. A dynamically linked program
// brings its ELF interpreter and, transitively, its shared libraries, at the
// same paths they have on the host.
func (b *Builder) Executable(p, src string) {
	b.Copy(p, src)
	if e, ok := b.entries[path.Clean("/"+p)]; ok {
		e.mode |= 0o111 // a script given as a program must run
		b.entries[path.Clean("/"+p)] = e
	}
	seen := map[string]bool{}
	var add func(file string)
	add = func(file string) {
		f, err := elf.Open(file)
		if err != nil {
			return // a script: nothing to follow
		}
		defer f.Close()
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				data, _ := io.ReadAll(prog.Open())
				interp := string(bytes.TrimRight(data, "\x00"))
				if !seen[interp] {
					seen[interp] = true
					b.Copy(interp, interp)
				}
			}
		}
		libs, _ := f.ImportedLibraries()
		rpaths, _ := f.DynString(elf.DT_RUNPATH)
		for _, lib := range libs {
			if seen[lib] {
				continue
			}
			seen[lib] = true
			found := ""
			for _, d := range append(splitPaths(rpaths, filepath.Dir(file)), libDirs...) {
				if _, err := os.Stat(filepath.Join(d, lib)); err == nil {
					found = filepath.Join(d, lib)
					break
				}
			}
			if found == "" {
				b.fail(fmt.Errorf("initramfs: %s needs %s, which is not installed on this host", src, lib))
				continue
			}
			b.Copy(found, found)
			add(found)
		}
	}
	add(src)
}

func splitPaths(rpaths []string, origin string) []string {
	var out []string
	for _, r := range rpaths {
		for _, d := range strings.Split(r, ":") {
			out = append(out, strings.ReplaceAll(d, "$ORIGIN", origin))
		}
	}
	return out
}

// initScript loads the modules and hands PID 1 to the program. A module that
// fails to load powers the guest off with a message instead of leaving it
// without the drivers the test relies on.
const initScript = `#!/bin/busybox sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in %s; do
	insmod "$m" || { echo "vio-initramfs: cannot load kernel module $m" >&2; poweroff -f; }
done
exec %s
`

// Init makes program (an image path, already added) the guest's init,
// started after the kernel modules are loaded.
func (b *Builder) Init(program string, args ...string) {
	cmd := shellQuote(program)
	for _, a := range args {
		cmd += " " + shellQuote(a)
	}
	b.File("/init", []byte(fmt.Sprintf(initScript, strings.Join(quoteAll(b.modules), " "), cmd)), 0o755)
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = shellQuote(s)
	}
	return out
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Write writes the gzipped cpio archive. Entries come out sorted, so a
// directory precedes what it holds and equal inputs give equal archives.
func (b *Builder) Write(w io.Writer) error {
	if b.err != nil {
		return b.err
	}
	if _, ok := b.entries["/init"]; !ok {
		return fmt.Errorf("initramfs: no /init (call Init)")
	}
	names := make([]string, 0, len(b.entries))
	for p := range b.entries {
		names = append(names, p)
	}
	sort.Strings(names)
	zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	c := &cpioWriter{w: zw}
	for _, p := range names {
		e := b.entries[p]
		c.entry(p[1:], e.mode, e.data)
	}
	if err := c.close(); err != nil {
		return err
	}
	return zw.Close()
}

// WriteFile writes the archive to file, atomically.
func (b *Builder) WriteFile(file string) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), ".initramfs-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := b.Write(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// Paths returns the image paths of everything added, sorted.
func (b *Builder) Paths() []string {
	names := make([]string, 0, len(b.entries))
	for p := range b.entries {
		names = append(names, p)
	}
	sort.Strings(names)
	return names
}

// WriteDir writes the collected files into dir as a directory tree instead
// of an archive (to make a filesystem image of large tools, say). No /init
// is needed.
func (b *Builder) WriteDir(dir string) error {
	if b.err != nil {
		return b.err
	}
	for _, p := range b.Paths() {
		e := b.entries[p]
		dst := filepath.Join(dir, filepath.FromSlash(p))
		var err error
		switch e.mode & 0o170000 {
		case modeDir:
			err = os.MkdirAll(dst, 0o755)
		case modeSymlink:
			err = os.Symlink(string(e.data), dst)
		default:
			err = os.WriteFile(dst, e.data, os.FileMode(e.mode&0o777))
		}
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
	}
	return nil
}

// Interpreter returns the ELF interpreter (dynamic loader) a program names,
// or "" for a static program or a script.
func Interpreter(file string) string {
	f, err := elf.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			data, _ := io.ReadAll(prog.Open())
			return string(bytes.TrimRight(data, "\x00"))
		}
	}
	return ""
}
