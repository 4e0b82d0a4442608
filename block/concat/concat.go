// Package concat joins several back-ends end to end into one larger disk:
// bytes [0, size0) are the first child's, the next size1 bytes the
// second's, and so on. Requests that cross a boundary are cut in two (or
// more) and the pieces go to their children concurrently.
package concat

import (
	"errors"
	"fmt"
	"sort"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/filter"
	"github.com/viovmm/vio/block/internal/split"
)

// MaxChildren bounds the children of one concat.
const MaxChildren = 64

type layout struct {
	starts []int64 // starts[i]: the disk offset of child i's first byte
	size   int64
}

func (l *layout) Size() int64 { return l.size }

func (l *layout) Map(off int64) (int, int64, int64) {
	// The last start <= off; empty children have start == next start and
	// are skipped by searching for the last one.
	i := sort.Search(len(l.starts), func(i int) bool { return l.starts[i] > off }) - 1
	end := l.size
	if i+1 < len(l.starts) {
		end = l.starts[i+1]
	}
	return i, off - l.starts[i], end - off
}

// New returns the children joined in order. It owns them on success; on
// error the caller still does.
func New(children []block.Backend) (block.Backend, error) {
	if len(children) == 0 || len(children) > MaxChildren {
		return nil, fmt.Errorf("concat: %d children: give 1 to %d", len(children), MaxChildren)
	}
	l := &layout{}
	for i, c := range children {
		s := c.Size()
		if s < 0 || l.size > (1<<62)-s {
			return nil, fmt.Errorf("concat: child %d's size %d makes the disk too large", i, s)
		}
		l.starts = append(l.starts, l.size)
		l.size += s
	}
	if l.size == 0 {
		return nil, errors.New("concat: every child is empty")
	}
	return filter.View(split.New(children, l), split.Caps(children)), nil
}
