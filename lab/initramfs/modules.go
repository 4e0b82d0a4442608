package initramfs

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Modules indexes the kernel modules of one unpacked kernel tree
// (lib/modules/KVER). Debian's kernel package ships no modules.dep, so
// dependencies come from each module's own .modinfo section.
type Modules struct {
	dir     string
	paths   map[string]string // canonical name -> path relative to dir
	builtin map[string]bool

	aliasOnce sync.Once
	aliases   map[string]string // alias -> canonical module name
}

// canonical folds the two spellings the kernel treats as one ("kvm-amd",
// "kvm_amd").
func canonical(name string) string { return strings.ReplaceAll(name, "-", "_") }

// OpenModules indexes the modules below dir.
func OpenModules(dir string) (*Modules, error) {
	m := &Modules{dir: dir, paths: map[string]string{}, builtin: map[string]bool{}}
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			rel, _ := filepath.Rel(dir, p)
			m.paths[canonical(strings.TrimSuffix(d.Name(), ".ko"))] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("indexing kernel modules in %s: %w", dir, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			m.builtin[canonical(strings.TrimSuffix(filepath.Base(l), ".ko"))] = true
		}
	}
	return m, nil
}

// Dir returns the directory the modules were indexed from.
func (m *Modules) Dir() string { return m.dir }

// modinfo returns the key=value pairs of a module's .modinfo section.
func (m *Modules) modinfo(rel string) (map[string][]string, error) {
	f, err := elf.Open(filepath.Join(m.dir, rel))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("%s has no .modinfo section", rel)
	}
	data, err := s.Data()
	if err != nil {
		return nil, err
	}
	info := map[string][]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			info[k] = append(info[k], v)
		}
	}
	return info, nil
}

// lookup resolves a module name or alias to a canonical module name. It
// returns "" with no error for a module built into the kernel.
func (m *Modules) lookup(name string) (string, error) {
	c := canonical(name)
	if _, ok := m.paths[c]; ok {
		return c, nil
	}
	if m.builtin[c] {
		return "", nil
	}
	m.aliasOnce.Do(m.indexAliases)
	if a, ok := m.aliases[name]; ok {
		return a, nil
	}
	return "", fmt.Errorf("kernel module %q is neither in %s nor built in", name, m.dir)
}

// indexAliases reads every module's aliases; it runs only when a name (a
// soft dependency like "crypto-crc32c") is not a module's own name.
func (m *Modules) indexAliases() {
	m.aliases = map[string]string{}
	for name, rel := range m.paths {
		info, err := m.modinfo(rel)
		if err != nil {
			continue
		}
		for _, a := range info["alias"] {
			// Prefer generic implementations: they run on any CPU model.
			if old, ok := m.aliases[a]; !ok || strings.HasSuffix(name, "_generic") && !strings.HasSuffix(old, "_generic") {
				m.aliases[a] = name
			}
		}
	}
}

// Resolve returns the files (relative to Dir) of the named modules and of
// everything they depend on, hard and soft, in an order in which insmod can
// load them one after another.
func (m *Modules) Resolve(names ...string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, chain []string, soft bool) error
	visit = func(name string, chain []string, soft bool) error {
		c, err := m.lookup(name)
		if err != nil && soft {
			// Soft dependencies may name modules of other architectures
			// (vfio's vfio_iommu_spapr_tce); like modprobe, go on without.
			return nil
		}
		if err != nil {
			if len(chain) > 0 {
				return fmt.Errorf("%w (needed by %s)", err, strings.Join(chain, " <- "))
			}
			return err
		}
		if c == "" || state[c] == 2 {
			return nil
		}
		if state[c] == 1 {
			return fmt.Errorf("kernel modules depend on each other in a cycle: %s", strings.Join(append(chain, c), " -> "))
		}
		state[c] = 1
		info, err := m.modinfo(m.paths[c])
		if err != nil {
			return err
		}
		var deps []string
		for _, d := range info["depends"] {
			deps = append(deps, strings.Split(d, ",")...)
		}
		// "pre: a b post: c": pre-dependencies load before the module,
		// post ones after it (vfio's post-dependency vfio_iommu_type1
		// itself depends on vfio).
		nhard := len(deps)
		var post []string
		for _, sd := range info["softdep"] {
			list := &deps
			for _, f := range strings.Fields(sd) {
				switch f {
				case "pre:":
					list = &deps
				case "post:":
					list = &post
				default:
					*list = append(*list, f)
				}
			}
		}
		for i, d := range deps {
			if d == "" {
				continue
			}
			if err := visit(d, append(chain, c), i >= nhard); err != nil {
				return err
			}
		}
		state[c] = 2
		order = append(order, m.paths[c])
		for _, d := range post {
			if err := visit(d, append(chain, c), true); err != nil {
				return err
			}
		}
		return nil
	}
	for _, n := range names {
		if err := visit(n, nil, false); err != nil {
			return nil, err
		}
	}
	return order, nil
}
