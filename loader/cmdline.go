package loader

import (
	"fmt"
	"strings"

	"github.com/viovmm/vio/memory"
)

// Cmdline builds a kernel command line no longer than the kernel accepts
// (Header.CmdlineSize, terminating NUL not included). The zero value is not
// usable; call NewCmdline.
type Cmdline struct {
	b   strings.Builder
	max int
}

// NewCmdline returns an empty command line limited to max bytes.
func NewCmdline(max uint32) *Cmdline { return &Cmdline{max: int(min(max, 1<<20))} }

// Add appends one or more space-separated parameters verbatim (a user's
// --cmdline, say). It rejects NUL and other control characters, which would
// truncate or corrupt the line, and anything that would exceed the limit;
// on error the line is unchanged.
func (c *Cmdline) Add(params string) error {
	params = strings.TrimSpace(params)
	if params == "" {
		return nil
	}
	for i := 0; i < len(params); i++ {
		if ch := params[i]; ch < 0x20 && ch != '\t' || ch == 0x7f {
			return fmt.Errorf("loader: command line parameter %q contains control character %#x", params, ch)
		}
	}
	n := len(params)
	if c.b.Len() > 0 {
		n++
	}
	if c.b.Len()+n > c.max {
		return fmt.Errorf("%w: command line would be %d bytes, the kernel accepts %d", ErrTooBig, c.b.Len()+n, c.max)
	}
	if c.b.Len() > 0 {
		c.b.WriteByte(' ')
	}
	c.b.WriteString(params)
	return nil
}

// AddKV appends key=value, double-quoting value when it contains blanks
// (the kernel's parser, lib/cmdline.c next_arg, honours the quotes).
func (c *Cmdline) AddKV(key, value string) error {
	if key == "" || strings.ContainsAny(key, " \t=\"") {
		return fmt.Errorf("loader: bad command line key %q", key)
	}
	if strings.ContainsRune(value, '"') {
		return fmt.Errorf("loader: command line value %q for %s contains a double quote", value, key)
	}
	if strings.ContainsAny(value, " \t") {
		value = `"` + value + `"`
	}
	return c.Add(key + "=" + value)
}

// String returns the command line.
func (c *Cmdline) String() string { return c.b.String() }

// Len returns its length in bytes, NUL not included.
func (c *Cmdline) Len() int { return c.b.Len() }

// Write stores the NUL-terminated command line at gpa and returns the
// value for the zero page's cmd_line_ptr. The caller keeps the
// Len()+1 bytes at gpa free of anything else.
func (c *Cmdline) Write(mem *memory.Memory, gpa uint64) error {
	b := append([]byte(c.b.String()), 0)
	if _, err := mem.WriteAt(b, int64(gpa)); err != nil {
		return fmt.Errorf("loader: writing command line at %#x: %w", gpa, err)
	}
	return nil
}
