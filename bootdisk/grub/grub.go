// Package grub finds the default entry of a GRUB 2 configuration
// (grub.cfg) and what it boots: the kernel, its arguments and the initrds,
// each with the GRUB device it is read from.
//
// It is not GRUB: it follows what grub-mkconfig writes and what people
// commonly write by hand, and says so clearly when an entry needs more.
// At the top level it records variable assignments, menu entries and
// submenus, and skips conditionals, loops and functions (grub-mkconfig puts
// only theme, terminal and saved-entry logic there; GRUB itself falls back
// to the first entry when "default" names nothing). Inside the chosen entry
// it runs set, search, linux and initrd; an if/else there runs its else
// branch (grub-mkconfig's "search with hints, else search without"), and an
// entry that picks its kernel under a condition is refused.
//
// grub.cfg comes from an untrusted disk image: its size, nesting and the
// work done on it are bounded, and a bad file is an error, not a panic.
package grub

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Path is a file as GRUB names it: a device ("hd0,gpt2"; "" for the
// device grub.cfg was read from) and an absolute path on it.
type Path struct {
	Device string
	File   string
}

func (p Path) String() string {
	if p.Device == "" {
		return p.File
	}
	return "(" + p.Device + ")" + p.File
}

// Entry is what a menu entry boots.
type Entry struct {
	Title   string
	Kernel  Path
	Args    []string // the kernel's command line, one parameter each
	Initrds []Path
}

// Searcher answers GRUB's search command: by is "fs-uuid", "label" or
// "file"; it returns the GRUB name of the first device that matches.
type Searcher interface {
	Search(by, what string) (device string, err error)
}

// ErrUnsupported is matched when the configuration needs something vio
// does not follow.
var ErrUnsupported = errors.New("not supported")

// menuItem is a top-level or submenu item.
type menuItem struct {
	title   string
	ids     []string
	body    []node
	submenu []menuItem
	isSub   bool
}

// Default returns the entry GRUB boots by default, with paths relative to
// root (the GRUB device grub.cfg is on; the initial $root). notes tells
// how the entry was chosen where that is not obvious (a default that
// names no entry, say).
func Default(cfg []byte, root string, s Searcher) (e *Entry, notes []string, err error) {
	nodes, err := parse(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("grub.cfg: %w", err)
	}
	in := &interp{vars: map[string]string{"root": root}, search: s}
	var items []menuItem
	for _, n := range nodes {
		switch n.kind {
		case nCmd:
			// set x=y, x=y and search; other commands are cosmetic
			// here. A search that fails leaves $root as it was, as in
			// GRUB, which goes on after a failed command.
			if args, _ := in.expandAll(n.words); len(args) > 0 && strings.HasPrefix(args[0], "search") {
				if _, ok := searchKinds[args[0]]; ok {
					_ = in.runSearch(args[0], args[1:])
				}
				continue
			}
			in.assign(n)
		case nBlock:
			it, ok, err := in.item(n, 0)
			if err != nil {
				return nil, nil, err
			}
			if ok {
				items = append(items, it)
			}
		}
	}
	if len(items) == 0 {
		return nil, nil, errors.New("grub.cfg has no menuentry")
	}
	def := in.vars["default"]
	it, ok := pick(items, def)
	if !ok {
		if def != "" {
			notes = append(notes, fmt.Sprintf("grub.cfg's default %q names no entry; booting the first, as GRUB does", def))
		}
		it = items[0]
	}
	// A submenu as the default: its first entry.
	for depth := 0; it.isSub; depth++ {
		if len(it.submenu) == 0 || depth > maxDepth {
			return nil, nil, fmt.Errorf("grub.cfg: submenu %q has no entry", it.title)
		}
		it = it.submenu[0]
	}
	e, err = in.run(it)
	if err != nil {
		return nil, notes, fmt.Errorf("grub.cfg entry %q: %w", it.title, err)
	}
	return e, notes, nil
}

// item turns a menuentry or submenu block into a menu item.
func (in *interp) item(n node, depth int) (menuItem, bool, error) {
	kind := n.words[0].keyword()
	if kind != "menuentry" && kind != "submenu" {
		return menuItem{}, false, nil // function
	}
	it := menuItem{body: n.body, isSub: kind == "submenu"}
	args, _ := in.expandAll(n.words[1:])
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--id" && i+1 < len(args):
			it.ids = append(it.ids, args[i+1])
			i++
		case strings.HasPrefix(a, "--id="):
			it.ids = append(it.ids, strings.TrimPrefix(a, "--id="))
		case (a == "--class" || a == "--users" || a == "--hotkey") && i+1 < len(args):
			i++
		case strings.HasPrefix(a, "--"):
		default:
			pos = append(pos, a)
		}
	}
	if len(pos) == 0 {
		return it, false, fmt.Errorf("grub.cfg line %d: %s without a title", n.line, kind)
	}
	it.title = pos[0]
	// "$menuentry_id_option 'id'" leaves the id positional when the
	// option variable is unset: accept it as an id too.
	it.ids = append(it.ids, pos[1:]...)
	if it.isSub {
		if depth > maxDepth {
			return it, false, fmt.Errorf("grub.cfg: submenus nested deeper than %d", maxDepth)
		}
		for _, c := range n.body {
			if c.kind != nBlock {
				continue
			}
			sub, ok, err := in.item(c, depth+1)
			if err != nil {
				return it, false, err
			}
			if ok {
				it.submenu = append(it.submenu, sub)
			}
		}
	}
	return it, true, nil
}

// pick resolves GRUB's default: an index, a title or an id, with ">"
// separating submenu levels.
func pick(items []menuItem, def string) (menuItem, bool) {
	if def == "" {
		return menuItem{}, false
	}
	parts := strings.Split(def, ">")
	var cur menuItem
	level := items
	for i, p := range parts {
		found := false
		if n, err := strconv.Atoi(p); err == nil {
			if n >= 0 && n < len(level) {
				cur, found = level[n], true
			}
		} else {
			for _, it := range level {
				if it.title == p || has(it.ids, p) {
					cur, found = it, true
					break
				}
			}
		}
		if !found {
			return menuItem{}, false
		}
		if i < len(parts)-1 {
			if !cur.isSub {
				return menuItem{}, false
			}
			level = cur.submenu
		}
	}
	return cur, true
}

type interp struct {
	vars   map[string]string
	search Searcher
	steps  int
}

const maxSteps = 10000

// expand expands one word into fields (unquoted variables split on
// blanks, as GRUB does) and reports the variables it found unset.
func (in *interp) expand(t token) (fields []string, unset []string) {
	var cur strings.Builder
	have := false
	for _, s := range t.segs {
		if !s.isVar {
			cur.WriteString(s.text)
			have = have || s.quoted || s.text != ""
			continue
		}
		v, ok := in.vars[s.text]
		if !ok {
			unset = append(unset, s.text)
		}
		if s.quoted {
			cur.WriteString(v)
			have = true
			continue
		}
		f := strings.Fields(v)
		for i, x := range f {
			if i > 0 {
				fields = append(fields, cur.String())
				cur.Reset()
			}
			cur.WriteString(x)
			have = true
		}
		if len(f) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
			fields = append(fields, cur.String())
			cur.Reset()
			have = false
		}
	}
	if have || cur.Len() > 0 {
		fields = append(fields, cur.String())
	}
	return fields, unset
}

func (in *interp) expandAll(ts []token) (args []string, unset []string) {
	for _, t := range ts {
		f, u := in.expand(t)
		args = append(args, f...)
		unset = append(unset, u...)
	}
	return args, unset
}

// assign runs "set name=value", "name=value" and "unset name".
func (in *interp) assign(n node) {
	if len(n.words) == 0 {
		return
	}
	args, _ := in.expandAll(n.words)
	if len(args) == 0 {
		return
	}
	set := func(a string) {
		if k, v, ok := strings.Cut(a, "="); ok && validName(k) {
			in.vars[k] = v
		}
	}
	switch args[0] {
	case "set":
		for _, a := range args[1:] {
			set(a)
		}
	case "unset":
		for _, a := range args[1:] {
			delete(in.vars, a)
		}
	default:
		if len(args) == 1 && strings.Contains(args[0], "=") {
			set(args[0])
		}
	}
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isNameByte(s[i], i == 0) {
			return false
		}
	}
	return true
}

// loaders GRUB has that boot something other than a Linux kernel.
var otherLoaders = map[string]string{
	"chainloader": "chain-loads another boot loader", "multiboot": "boots a multiboot kernel",
	"multiboot2": "boots a multiboot2 kernel", "kfreebsd": "boots FreeBSD", "knetbsd": "boots NetBSD",
	"kopenbsd": "boots OpenBSD", "appleloader": "boots macOS", "configfile": "hands over to another configuration file",
	"source": "reads another configuration file", "xnu_kernel": "boots macOS", "xnu_kernel64": "boots macOS",
}

// run runs the entry's body and returns what it boots.
func (in *interp) run(it menuItem) (*Entry, error) {
	e := &Entry{Title: it.title}
	// The entry runs with its own copy of the variables, as GRUB gives
	// each entry a new context carrying the exported ones.
	saved := in.vars
	in.vars = make(map[string]string, len(saved))
	for k, v := range saved {
		in.vars[k] = v
	}
	defer func() { in.vars = saved }()
	if err := in.runList(it.body, e, false); err != nil {
		return nil, err
	}
	if e.Kernel.File == "" {
		return nil, errors.New("it has no linux command, so it boots no Linux kernel")
	}
	return e, nil
}

func (in *interp) runList(nodes []node, e *Entry, conditional bool) error {
	for _, n := range nodes {
		in.steps++
		if in.steps > maxSteps {
			return fmt.Errorf("more than %d commands", maxSteps)
		}
		switch n.kind {
		case nCmd:
			if err := in.runCmd(n, e, conditional); err != nil {
				return fmt.Errorf("line %d: %w", n.line, err)
			}
		case nIf:
			// Conditions are not evaluated: they test GRUB's platform
			// and features. grub-mkconfig's own pattern is "search with
			// hints if the feature exists, else search without": the
			// else branch. Branches that choose the kernel are refused.
			branches := append([][]node{n.body}, n.elifs...)
			if n.hasEl {
				branches = append(branches, n.els)
			}
			for _, b := range branches {
				if boots(b) {
					return fmt.Errorf("line %d: %w: the entry chooses its kernel or initrd under a condition vio cannot evaluate", n.line, ErrUnsupported)
				}
			}
			if n.hasEl {
				if err := in.runList(n.els, e, true); err != nil {
					return err
				}
			}
		case nLoop:
			if boots(n.body) {
				return fmt.Errorf("line %d: %w: the entry loads its kernel inside a loop", n.line, ErrUnsupported)
			}
		case nBlock:
			// A function defined inside the entry: not called by us.
		}
	}
	return nil
}

// boots reports whether nodes contain a linux or initrd command.
func boots(nodes []node) bool {
	for _, n := range nodes {
		if len(n.words) > 0 {
			switch n.words[0].keyword() {
			case "linux", "linux16", "linuxefi", "initrd", "initrd16", "initrdefi":
				return true
			}
		}
		if boots(n.body) || boots(n.els) {
			return true
		}
		for _, b := range n.elifs {
			if boots(b) {
				return true
			}
		}
	}
	return false
}

func (in *interp) runCmd(n node, e *Entry, conditional bool) error {
	if len(n.words) == 0 {
		return nil
	}
	args, unset := in.expandAll(n.words)
	if len(args) == 0 {
		return nil
	}
	switch cmd := args[0]; cmd {
	case "set", "unset":
		in.assign(n)
	case "search", "search.fs_uuid", "search.fs_label", "search.file":
		return in.runSearch(cmd, args[1:])
	case "linux", "linux16", "linuxefi":
		if len(args) < 2 {
			return fmt.Errorf("%s with no kernel", cmd)
		}
		if len(unset) > 0 {
			if p, u := in.expand(n.words[1]); len(p) == 0 || len(u) > 0 {
				return fmt.Errorf("%w: the kernel path uses $%s, which is never set where vio can see it", ErrUnsupported, strings.Join(unset, ", $"))
			}
		}
		p, err := in.path(args[1])
		if err != nil {
			return err
		}
		e.Kernel, e.Args = p, args[2:]
	case "initrd", "initrd16", "initrdefi":
		if len(args) < 2 {
			return fmt.Errorf("%s with no file", cmd)
		}
		if len(unset) > 0 {
			return fmt.Errorf("%w: the initrd path uses $%s, which is never set where vio can see it", ErrUnsupported, strings.Join(unset, ", $"))
		}
		e.Initrds = e.Initrds[:0]
		for _, a := range args[1:] {
			p, err := in.path(a)
			if err != nil {
				return err
			}
			e.Initrds = append(e.Initrds, p)
		}
	default:
		if why, bad := otherLoaders[cmd]; bad {
			return fmt.Errorf("%w: the entry %s (%s)", ErrUnsupported, why, cmd)
		}
		if len(args) == 1 && strings.Contains(cmd, "=") {
			in.assign(n)
		}
		// insmod, echo, load_video, gfxmode ...: nothing to do without
		// a firmware console.
	}
	return nil
}

// path splits "(dev)/file" or "/file" (on $root).
func (in *interp) path(a string) (Path, error) {
	if strings.HasPrefix(a, "(") {
		end := strings.IndexByte(a, ')')
		if end < 0 {
			return Path{}, fmt.Errorf("path %q: unclosed device name", a)
		}
		dev, file := a[1:end], a[end+1:]
		if !strings.HasPrefix(file, "/") {
			return Path{}, fmt.Errorf("path %q: no file after the device", a)
		}
		return Path{Device: dev, File: file}, nil
	}
	if !strings.HasPrefix(a, "/") {
		return Path{}, fmt.Errorf("path %q is not absolute", a)
	}
	return Path{Device: strings.Trim(in.vars["root"], "()"), File: a}, nil
}

var searchKinds = map[string]string{"search": "file", "search.fs_uuid": "fs-uuid", "search.fs_label": "label", "search.file": "file"}

// runSearch runs search [--fs-uuid|--label|--file] [--set[=VAR]] NAME
// [VAR], and the search.fs_uuid family.
func (in *interp) runSearch(cmd string, args []string) error {
	by := searchKinds[cmd]
	setVar := ""
	var pos []string
	for _, a := range args {
		switch {
		case a == "--fs-uuid" || a == "-u":
			by = "fs-uuid"
		case a == "--label" || a == "-l":
			by = "label"
		case a == "--file" || a == "-f":
			by = "file"
		case a == "--set" || a == "-s":
			setVar = "root"
		case strings.HasPrefix(a, "--set="):
			setVar = strings.TrimPrefix(a, "--set=")
		case strings.HasPrefix(a, "-"):
			// --no-floppy, --hint*=..., --efidisk-only: hints only.
		default:
			pos = append(pos, a)
		}
	}
	if len(pos) == 0 {
		return errors.New("search with nothing to search for")
	}
	if setVar == "" && len(pos) > 1 {
		setVar = pos[1]
	}
	if setVar == "" {
		return nil // GRUB only prints what it found
	}
	if in.search == nil {
		return fmt.Errorf("%w: search", ErrUnsupported)
	}
	dev, err := in.search.Search(by, pos[0])
	if err != nil {
		return fmt.Errorf("search --%s %s: %w", by, pos[0], err)
	}
	in.vars[setVar] = dev
	return nil
}
