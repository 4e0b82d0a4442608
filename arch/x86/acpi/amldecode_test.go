package acpi_test

import (
	"errors"
	"fmt"
	"strings"
)

// An AML decoder written from the ACPI specification (chapter 20) for the
// tests, independent of the package's encoder: it accepts the subset of
// AML a VMM's DSDT uses and rejects everything else, so an encoding
// mistake shows up as a decode error or a wrong value.

type amlKind int

const (
	amlInteger amlKind = iota + 1
	amlString
	amlPackage
	amlBuffer
	amlMethod
	amlDevice
	amlScope
	amlRegion
	amlField
)

// amlObject is a named object or a data value.
type amlObject struct {
	kind  amlKind
	i     uint64
	s     string
	elems []amlObject // package
	buf   []byte      // buffer
	// methods: argument count, flags and the body, decoded as a list
	// of the statements the decoder understands
	args  int
	flags byte
	body  []string
	// regions: space, offset and length; fields: region, bit offset
	// and width, and the Field's flags
	space            byte
	offset, length   uint64
	region           string
	bitOff, bitWidth int
	fieldFlags       byte
}

type amlNamespace map[string]*amlObject // absolute path ("\_SB_.PCI0._HID") → object

var errAML = errors.New("aml")

type amlDecoder struct {
	b   []byte
	pos int
	ns  amlNamespace
}

func decodeAML(b []byte) (amlNamespace, error) {
	d := &amlDecoder{b: b, ns: amlNamespace{}}
	if err := d.termList(len(b), `\`); err != nil {
		return nil, err
	}
	return d.ns, nil
}

func (d *amlDecoder) fail(format string, a ...any) error {
	return fmt.Errorf("%w at offset %#x: %s", errAML, d.pos, fmt.Sprintf(format, a...))
}

func (d *amlDecoder) byte() (byte, error) {
	if d.pos >= len(d.b) {
		return 0, d.fail("unexpected end")
	}
	c := d.b[d.pos]
	d.pos++
	return c, nil
}

func (d *amlDecoder) bytes(n int) ([]byte, error) {
	if n < 0 || d.pos+n > len(d.b) {
		return nil, d.fail("%d bytes past the end", n)
	}
	out := d.b[d.pos : d.pos+n]
	d.pos += n
	return out, nil
}

// pkgEnd reads a PkgLength and returns the offset where the package ends.
func (d *amlDecoder) pkgEnd() (int, error) {
	start := d.pos
	lead, err := d.byte()
	if err != nil {
		return 0, err
	}
	follow := int(lead >> 6)
	n := int(lead & 0x3f)
	if follow > 0 {
		if lead&0x30 != 0 {
			return 0, d.fail("PkgLength lead byte %#x has bits 5:4 set", lead)
		}
		n = int(lead & 0x0f)
		for i := 0; i < follow; i++ {
			c, err := d.byte()
			if err != nil {
				return 0, err
			}
			n |= int(c) << (4 + 8*i)
		}
	}
	end := start + n
	if end > len(d.b) || end < d.pos {
		return 0, d.fail("package of %d bytes runs past its container", n)
	}
	return end, nil
}

func isLead(c byte) bool  { return c == '_' || c >= 'A' && c <= 'Z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func (d *amlDecoder) nameSeg() (string, error) {
	s, err := d.bytes(4)
	if err != nil {
		return "", err
	}
	if !isLead(s[0]) {
		return "", d.fail("bad name segment %q", s)
	}
	for _, c := range s[1:] {
		if !isLead(c) && !isDigit(c) {
			return "", d.fail("bad name segment %q", s)
		}
	}
	return string(s), nil
}

// nameString returns the name resolved against scope.
func (d *amlDecoder) nameString(scope string) (string, error) {
	root := false
	if d.pos < len(d.b) && d.b[d.pos] == '\\' {
		root = true
		d.pos++
	}
	var segs []string
	c, err := d.byte()
	if err != nil {
		return "", err
	}
	switch {
	case c == 0x00:
	case c == 0x2e:
		for i := 0; i < 2; i++ {
			s, err := d.nameSeg()
			if err != nil {
				return "", err
			}
			segs = append(segs, s)
		}
	case c == 0x2f:
		n, err := d.byte()
		if err != nil {
			return "", err
		}
		for i := 0; i < int(n); i++ {
			s, err := d.nameSeg()
			if err != nil {
				return "", err
			}
			segs = append(segs, s)
		}
	default:
		d.pos--
		s, err := d.nameSeg()
		if err != nil {
			return "", err
		}
		segs = append(segs, s)
	}
	path := strings.Join(segs, ".")
	if root {
		return `\` + path, nil
	}
	if scope == `\` {
		return `\` + path, nil
	}
	return scope + "." + path, nil
}

func (d *amlDecoder) define(path string, o *amlObject) error {
	if _, dup := d.ns[path]; dup {
		return d.fail("%s defined twice", path)
	}
	d.ns[path] = o
	return nil
}

func (d *amlDecoder) termList(end int, scope string) error {
	for d.pos < end {
		op, _ := d.byte()
		switch op {
		case 0x08: // NameOp
			n, err := d.nameString(scope)
			if err != nil {
				return err
			}
			v, err := d.dataObject(end)
			if err != nil {
				return err
			}
			if err := d.define(n, &v); err != nil {
				return err
			}
		case 0x10: // ScopeOp
			pe, err := d.pkgEnd()
			if err != nil {
				return err
			}
			n, err := d.nameString(scope)
			if err != nil {
				return err
			}
			// \_SB and \_GPE are the namespace's predefined
			// scopes (ACPI 6.5, 5.3.1); anything else must exist.
			predefined := n == `\_SB_` || n == `\_GPE`
			if _, ok := d.ns[n]; !ok && !predefined {
				return d.fail("scope %s names nothing", n)
			}
			if predefined {
				d.ns[n] = &amlObject{kind: amlScope}
			}
			if err := d.termList(pe, n); err != nil {
				return err
			}
		case 0x5b:
			ext, err := d.byte()
			if err != nil {
				return err
			}
			switch ext {
			case 0x80: // OperationRegionOp
				if err := d.opRegion(scope); err != nil {
					return err
				}
				continue
			case 0x81: // FieldOp
				if err := d.field(scope); err != nil {
					return err
				}
				continue
			case 0x82: // DeviceOp
			default:
				return d.fail("unsupported extended opcode 5b %02x", ext)
			}
			pe, err := d.pkgEnd()
			if err != nil {
				return err
			}
			n, err := d.nameString(scope)
			if err != nil {
				return err
			}
			if err := d.define(n, &amlObject{kind: amlDevice}); err != nil {
				return err
			}
			if err := d.termList(pe, n); err != nil {
				return err
			}
		case 0x14: // MethodOp
			pe, err := d.pkgEnd()
			if err != nil {
				return err
			}
			n, err := d.nameString(scope)
			if err != nil {
				return err
			}
			flags, err := d.byte()
			if err != nil {
				return err
			}
			m := &amlObject{kind: amlMethod, args: int(flags & 7), flags: flags}
			if err := d.define(n, m); err != nil {
				return err
			}
			for d.pos < pe {
				st, err := d.term(pe, n)
				if err != nil {
					return err
				}
				m.body = append(m.body, st)
			}
			if d.pos != pe {
				return d.fail("method %s: a statement runs past its end", n)
			}
		default:
			d.pos--
			return d.fail("unsupported opcode %#x in a term list", op)
		}
		if d.pos > end {
			return d.fail("term runs past its container")
		}
	}
	return nil
}

// term decodes one statement or expression of a method body into ASL-like
// text ("Store(\\_SB_.PHPR.PCIU, Local0)"), so that tests compare a
// method with what it should do. Calls are decoded with the argument
// count of the method they name, which must be defined before (AML does
// not encode it). scope is the method's path.
func (d *amlDecoder) term(end int, scope string) (string, error) {
	if d.pos >= end {
		return "", d.fail("term past the end of its container")
	}
	op, err := d.byte()
	if err != nil {
		return "", err
	}
	args := func(n int) ([]string, error) {
		var out []string
		for i := 0; i < n; i++ {
			a, err := d.term(end, scope)
			if err != nil {
				return nil, err
			}
			out = append(out, a)
		}
		return out, nil
	}
	// target decodes a Target: the null name, or a name to store into.
	target := func() (string, error) {
		t, err := d.byte()
		if err != nil {
			return "", err
		}
		if t == 0 {
			return "", nil
		}
		d.pos--
		n, err := d.nameString(scope)
		if err != nil {
			return "", err
		}
		n, o, ok := d.lookup(n, scope)
		if !ok || o.kind != amlField {
			return "", d.fail("target %s is not a field", n)
		}
		return ", " + n, nil
	}
	switch {
	case op == 0x00:
		return "Zero", nil
	case op == 0x01:
		return "One", nil
	case op == 0x0a || op == 0x0b || op == 0x0c || op == 0x0e:
		d.pos--
		v, err := d.dataObject(end)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%#x", v.i), nil
	case op >= 0x60 && op <= 0x67:
		return fmt.Sprintf("Local%d", op-0x60), nil
	case op >= 0x68 && op <= 0x6e:
		return fmt.Sprintf("Arg%d", op-0x68), nil
	case op == 0xa4: // ReturnOp
		a, err := args(1)
		if err != nil {
			return "", err
		}
		return "Return(" + a[0] + ")", nil
	case op == 0x70: // StoreOp
		a, err := args(2)
		if err != nil {
			return "", err
		}
		return "Store(" + a[0] + ", " + a[1] + ")", nil
	case op == 0x7b || op == 0x79: // AndOp, ShiftLeftOp
		a, err := args(2)
		if err != nil {
			return "", err
		}
		t, err := target()
		if err != nil {
			return "", err
		}
		n := map[byte]string{0x7b: "And", 0x79: "ShiftLeft"}[op]
		return n + "(" + a[0] + ", " + a[1] + t + ")", nil
	case op == 0x93: // LEqualOp
		a, err := args(2)
		if err != nil {
			return "", err
		}
		return "LEqual(" + a[0] + ", " + a[1] + ")", nil
	case op == 0x86: // NotifyOp
		obj, err := d.nameString(scope)
		if err != nil {
			return "", err
		}
		obj, o, ok := d.lookup(obj, scope)
		if !ok || o.kind != amlDevice {
			return "", d.fail("Notify of %s, which is not a device", obj)
		}
		a, err := args(1)
		if err != nil {
			return "", err
		}
		return "Notify(" + obj + ", " + a[0] + ")", nil
	case op == 0xa0: // IfOp
		pe, err := d.pkgEnd()
		if err != nil {
			return "", err
		}
		if pe > end {
			return "", d.fail("If runs past its container")
		}
		pred, err := d.term(pe, scope)
		if err != nil {
			return "", err
		}
		var body []string
		for d.pos < pe {
			st, err := d.term(pe, scope)
			if err != nil {
				return "", err
			}
			body = append(body, st)
		}
		return "If(" + pred + ") {" + strings.Join(body, "; ") + "}", nil
	case op == '\\' || op == 0x2e || op == 0x2f || isLead(op):
		d.pos--
		n, err := d.nameString(scope)
		if err != nil {
			return "", err
		}
		n, o, ok := d.lookup(n, scope)
		if !ok {
			return "", d.fail("%s names nothing defined before it", n)
		}
		if o.kind != amlMethod {
			return n, nil
		}
		a, err := args(o.args)
		if err != nil {
			return "", err
		}
		return n + "(" + strings.Join(a, ", ") + ")", nil
	}
	return "", d.fail("unsupported method opcode %#x", op)
}

// lookup resolves a name the way AML does: an absolute or multi-segment
// path as given (relative to scope), a single segment by searching scope
// and its parents.
func (d *amlDecoder) lookup(n, scope string) (string, *amlObject, bool) {
	if o, ok := d.ns[n]; ok {
		return n, o, true
	}
	i := strings.LastIndex(n, ".")
	if i < 0 {
		return n, nil, false
	}
	seg := n[i+1:]
	for s := n[:i]; ; {
		j := strings.LastIndex(s, ".")
		if j < 0 {
			o, ok := d.ns[`\`+seg]
			return `\` + seg, o, ok
		}
		s = s[:j]
		if o, ok := d.ns[s+"."+seg]; ok {
			return s + "." + seg, o, true
		}
	}
}

// opRegion decodes OperationRegion(name, space, offset, length) with
// constant offset and length.
func (d *amlDecoder) opRegion(scope string) error {
	n, err := d.nameString(scope)
	if err != nil {
		return err
	}
	space, err := d.byte()
	if err != nil {
		return err
	}
	off, err := d.dataObject(len(d.b))
	if err != nil {
		return err
	}
	ln, err := d.dataObject(len(d.b))
	if err != nil {
		return err
	}
	if off.kind != amlInteger || ln.kind != amlInteger {
		return d.fail("region %s with a computed offset or length", n)
	}
	return d.define(n, &amlObject{kind: amlRegion, space: space, offset: off.i, length: ln.i})
}

// field decodes Field(region, flags) { name, bits, ... } with named
// fields only.
func (d *amlDecoder) field(scope string) error {
	pe, err := d.pkgEnd()
	if err != nil {
		return err
	}
	rn, err := d.nameString(scope)
	if err != nil {
		return err
	}
	rn, r, ok := d.lookup(rn, scope)
	if !ok || r.kind != amlRegion {
		return d.fail("field of %s, which is not a region", rn)
	}
	flags, err := d.byte()
	if err != nil {
		return err
	}
	bit := 0
	for d.pos < pe {
		seg, err := d.nameSeg()
		if err != nil {
			return err
		}
		// The width is a PkgLength that does not count itself.
		lead, err := d.byte()
		if err != nil {
			return err
		}
		w := int(lead & 0x3f)
		if follow := int(lead >> 6); follow > 0 {
			w = int(lead & 0x0f)
			for i := 0; i < follow; i++ {
				c, err := d.byte()
				if err != nil {
					return err
				}
				w |= int(c) << (4 + 8*i)
			}
		}
		path := scope + "." + seg
		if scope == `\` {
			path = `\` + seg
		}
		if err := d.define(path, &amlObject{kind: amlField, region: rn, bitOff: bit, bitWidth: w, fieldFlags: flags}); err != nil {
			return err
		}
		bit += w
	}
	if d.pos != pe {
		return d.fail("field list runs past its package")
	}
	if uint64(bit) > 8*r.length {
		return d.fail("fields of %d bits in a region of %d bytes", bit, r.length)
	}
	return nil
}

func (d *amlDecoder) dataObject(end int) (amlObject, error) {
	op, err := d.byte()
	if err != nil {
		return amlObject{}, err
	}
	intOf := func(n int) (amlObject, error) {
		b, err := d.bytes(n)
		if err != nil {
			return amlObject{}, err
		}
		var v uint64
		for i := n - 1; i >= 0; i-- {
			v = v<<8 | uint64(b[i])
		}
		return amlObject{kind: amlInteger, i: v}, nil
	}
	switch op {
	case 0x00:
		return amlObject{kind: amlInteger, i: 0}, nil
	case 0x01:
		return amlObject{kind: amlInteger, i: 1}, nil
	case 0xff:
		return amlObject{kind: amlInteger, i: ^uint64(0)}, nil
	case 0x0a:
		return intOf(1)
	case 0x0b:
		return intOf(2)
	case 0x0c:
		return intOf(4)
	case 0x0e:
		return intOf(8)
	case 0x0d:
		start := d.pos
		for {
			c, err := d.byte()
			if err != nil {
				return amlObject{}, err
			}
			if c == 0 {
				break
			}
			if c > 0x7f {
				return amlObject{}, d.fail("non-ASCII string")
			}
		}
		return amlObject{kind: amlString, s: string(d.b[start : d.pos-1])}, nil
	case 0x12: // PackageOp
		pe, err := d.pkgEnd()
		if err != nil {
			return amlObject{}, err
		}
		n, err := d.byte()
		if err != nil {
			return amlObject{}, err
		}
		p := amlObject{kind: amlPackage}
		for d.pos < pe {
			e, err := d.dataObject(pe)
			if err != nil {
				return amlObject{}, err
			}
			p.elems = append(p.elems, e)
		}
		if d.pos != pe || len(p.elems) != int(n) {
			return amlObject{}, d.fail("package says %d elements, holds %d", n, len(p.elems))
		}
		return p, nil
	case 0x11: // BufferOp
		pe, err := d.pkgEnd()
		if err != nil {
			return amlObject{}, err
		}
		size, err := d.dataObject(pe)
		if err != nil {
			return amlObject{}, err
		}
		if size.kind != amlInteger || d.pos+int(size.i) != pe {
			return amlObject{}, d.fail("buffer size %d does not match its package", size.i)
		}
		b, _ := d.bytes(int(size.i))
		return amlObject{kind: amlBuffer, buf: b}, nil
	}
	d.pos--
	return amlObject{}, d.fail("unsupported data object opcode %#x", op)
}

// decodeEISA turns a compressed EISA id back into its seven characters.
func decodeEISA(v uint64) string {
	x := uint32(v)
	x = x>>24 | x>>8&0xff00 | x<<8&0xff0000 | x<<24 // stored big-endian
	c := func(sh uint) byte { return byte(x>>sh&0x1f) + '@' }
	return fmt.Sprintf("%c%c%c%04X", c(26), c(21), c(16), x&0xffff)
}

// resource is one decoded resource descriptor.
type resource struct {
	kind                string // "io", "irq", "mem32fixed", "word", "dword", "qword"
	min, max, gran, tra uint64
	length              uint64
	align               uint64
	rtype, gflags, tfl  byte
	irqMask             uint16
	decode16, writeable bool
}

// decodeResources parses a resource template buffer, end tag included.
func decodeResources(b []byte) ([]resource, error) {
	var out []resource
	for i := 0; i < len(b); {
		tag := b[i]
		if tag&0x80 == 0 {
			n := int(tag & 7)
			typ := tag >> 3 & 0xf
			if i+1+n > len(b) {
				return nil, fmt.Errorf("small descriptor %#x runs past the buffer", tag)
			}
			d := b[i+1 : i+1+n]
			switch {
			case typ == 0x0f: // end tag
				if n != 1 || i+2 != len(b) {
					return nil, fmt.Errorf("end tag not at the end (%d bytes follow)", len(b)-i-2)
				}
				return out, nil
			case typ == 0x08 && n == 7:
				out = append(out, resource{kind: "io", decode16: d[0]&1 == 1,
					min: uint64(le.Uint16(d[1:])), max: uint64(le.Uint16(d[3:])),
					align: uint64(d[5]), length: uint64(d[6])})
			case typ == 0x04 && (n == 2 || n == 3):
				out = append(out, resource{kind: "irq", irqMask: le.Uint16(d)})
			default:
				return nil, fmt.Errorf("unexpected small descriptor type %#x length %d", typ, n)
			}
			i += 1 + n
			continue
		}
		if i+3 > len(b) {
			return nil, fmt.Errorf("large descriptor header runs past the buffer")
		}
		n := int(le.Uint16(b[i+1:]))
		if i+3+n > len(b) {
			return nil, fmt.Errorf("large descriptor %#x runs past the buffer", tag)
		}
		d := b[i+3 : i+3+n]
		switch {
		case tag == 0x86 && n == 9:
			out = append(out, resource{kind: "mem32fixed", writeable: d[0]&1 == 1,
				min: uint64(le.Uint32(d[1:])), length: uint64(le.Uint32(d[5:]))})
		case tag == 0x89 && n == 6 && d[1] == 1:
			// Extended interrupt: flags, count 1, one 32-bit GSI.
			out = append(out, resource{kind: "extirq", gflags: d[0], min: uint64(le.Uint32(d[2:])), length: 1})
		case tag == 0x88 && n == 13:
			out = append(out, resource{kind: "word", rtype: d[0], gflags: d[1], tfl: d[2],
				gran: uint64(le.Uint16(d[3:])), min: uint64(le.Uint16(d[5:])), max: uint64(le.Uint16(d[7:])),
				tra: uint64(le.Uint16(d[9:])), length: uint64(le.Uint16(d[11:]))})
		case tag == 0x87 && n == 23:
			out = append(out, resource{kind: "dword", rtype: d[0], gflags: d[1], tfl: d[2],
				gran: uint64(le.Uint32(d[3:])), min: uint64(le.Uint32(d[7:])), max: uint64(le.Uint32(d[11:])),
				tra: uint64(le.Uint32(d[15:])), length: uint64(le.Uint32(d[19:]))})
		case tag == 0x8a && n == 43:
			out = append(out, resource{kind: "qword", rtype: d[0], gflags: d[1], tfl: d[2],
				gran: le.Uint64(d[3:]), min: le.Uint64(d[11:]), max: le.Uint64(d[19:]),
				tra: le.Uint64(d[27:]), length: le.Uint64(d[35:])})
		default:
			return nil, fmt.Errorf("unexpected large descriptor %#x length %d", tag, n)
		}
		i += 3 + n
	}
	return nil, fmt.Errorf("resource template without an end tag")
}
