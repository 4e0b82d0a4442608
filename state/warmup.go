package state

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"reflect"
)

// Sampler is a Snapshottable that can give a value of its State type
// without reading the component, so that WarmUp can run the codec on it.
// The value's contents do not matter; only its type does.
type Sampler interface {
	StateSample() any
}

// WarmUp encodes each sample as a section and decodes it back, strictly,
// into a fresh value of its type, through a whole container (Encode,
// Decode): what a migration's stop-and-copy does with the real state.
// encoding/json builds its encoder and field tables for a type by
// reflection on first use, and the code of every path runs for the first
// time in the process; done before the VM pauses, neither is paid in the
// guest's downtime. It touches no component, so it is safe while the VM
// runs.
func WarmUp(samples []any) error {
	s := New()
	for i, v := range samples {
		filled := reflect.New(reflect.TypeOf(v)).Elem()
		fill(filled, 3)
		data, err := Marshal(filled.Interface())
		if err != nil {
			return err
		}
		id := fmt.Sprintf("warm-up%d", i)
		s.index[id] = len(s.sections)
		s.sections = append(s.sections, Section{ID: id, Kind: "warm-up", Version: 1, Data: data})
	}
	var b bytes.Buffer
	if err := s.Encode(&b); err != nil {
		return err
	}
	back, err := Decode(&b)
	if err != nil {
		return err
	}
	for i, sec := range back.sections {
		into := reflect.New(reflect.TypeOf(samples[i]))
		if err := Unmarshal(sec.Data, into.Interface()); err != nil {
			return fmt.Errorf("state: warm-up of %T: %w", samples[i], err)
		}
	}
	return nil
}

// fill gives v a value in every field, element and pointer, depth levels
// down, so that decoding it walks the nested types' paths too (a zero
// value is mostly nulls and empty lists).
func fill(v reflect.Value, depth int) {
	if depth < 0 || !v.CanSet() || marshalsItself(v.Type()) {
		return
	}
	switch v.Kind() {
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		v.SetUint(1)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(1)
	case reflect.String:
		v.SetString("x")
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fill(p.Elem(), depth-1)
		v.Set(p)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fill(s.Index(0), depth-1)
		v.Set(s)
	case reflect.Array:
		if v.Len() > 0 {
			fill(v.Index(0), depth-1)
		}
	case reflect.Map:
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(k, depth-1)
		fill(e, depth-1)
		m := reflect.MakeMapWithSize(v.Type(), 1)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), depth)
			}
		}
	}
}

// marshalsItself reports whether t has its own JSON or text encoding,
// which a value filled in field by field may not satisfy
// (json.RawMessage must hold JSON): such values stay zero.
func marshalsItself(t reflect.Type) bool {
	for _, m := range []reflect.Type{
		reflect.TypeFor[json.Marshaler](), reflect.TypeFor[json.Unmarshaler](),
		reflect.TypeFor[encoding.TextMarshaler](), reflect.TypeFor[encoding.TextUnmarshaler](),
	} {
		if t.Implements(m) || reflect.PointerTo(t).Implements(m) {
			return true
		}
	}
	return false
}
