package journal

import (
	"errors"
	"fmt"
)

// ErrBadRequest is matched by operations refused for what was asked (a
// bad or taken mark name, a commit an undo disk cannot do, an unknown
// operation), as opposed to failures of the log or the base.
var ErrBadRequest = errors.New("bad request")

// Request is one operation named as the API carries it.
type Request struct {
	Op    string `json:"op"`              // list, mark, revert, commit, compact
	Name  string `json:"name,omitempty"`  // mark: the new mark's name
	Point string `json:"point,omitempty"` // revert (required), commit (default: the current point)
}

// Do runs r on o and returns the history after it.
func Do(o Ops, r Request) (Status, error) {
	var err error
	switch r.Op {
	case "list":
	case "mark":
		if r.Name == "" {
			return Status{}, fmt.Errorf("journal: %w: mark needs the mark's name (name)", ErrBadRequest)
		}
		_, err = o.Mark(r.Name)
	case "revert":
		if r.Point == "" {
			return Status{}, fmt.Errorf("journal: %w: revert needs the point to go to (point: a mark or an id)", ErrBadRequest)
		}
		err = o.Revert(r.Point)
	case "commit":
		err = o.Commit(r.Point)
	case "compact":
		err = o.Compact()
	default:
		return Status{}, fmt.Errorf("journal: %w: operation %q: want list, mark, revert, commit or compact", ErrBadRequest, r.Op)
	}
	if err != nil {
		return Status{}, err
	}
	return o.List()
}
