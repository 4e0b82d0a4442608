package state

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

type warmInner struct {
	B    []byte
	Arr  [4]uint16
	Next *warmInner `json:",omitempty"`
}

type warmOuter struct {
	Name  string
	On    bool
	In    warmInner
	Ptr   *warmInner
	List  []warmInner
	ByKey map[string]uint32
	Raw   json.RawMessage `json:",omitempty"`
	skip  int
}

// refusing cannot be decoded from what it encodes to.
type refusing struct{ N int }

func (r *refusing) UnmarshalJSON([]byte) error { return errors.New("never") }

// WarmUp runs the codec over nested, filled values of each type, and says
// so when a type's own encoding does not round-trip.
func TestWarmUp(t *testing.T) {
	if err := WarmUp([]any{warmOuter{}, warmInner{}, uint64(0), ""}); err != nil {
		t.Fatal(err)
	}
	v := warmOuter{}
	fill(reflect.ValueOf(&v).Elem(), 3)
	if v.Name == "" || !v.On || v.Ptr == nil || len(v.List) != 1 || len(v.ByKey) != 1 || len(v.In.B) != 1 || v.In.Arr[0] == 0 {
		t.Errorf("fill left parts zero: %+v", v)
	}
	if v.Raw != nil {
		t.Errorf("fill put %q in a json.RawMessage, which must hold JSON", v.Raw)
	}
	if err := WarmUp([]any{refusing{}}); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("a type that does not round-trip: %v", err)
	}
}
