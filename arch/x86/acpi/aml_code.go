package acpi

import "fmt"

// The executable part of the AML encoder: operation regions, fields and
// the few statements and expressions the hot-plug methods need (ACPI 6.5,
// 20.2.5 "Term Objects Encoding"). As in aml.go, the inputs come from this
// package, so a malformed one is a bug here and panics.

// More AML opcodes.
const (
	opLocal0       = 0x60
	opStore        = 0x70
	opShiftLeft    = 0x79
	opAnd          = 0x7b
	opNotify       = 0x86
	opIf           = 0xa0
	opMultiName    = 0x2f
	opNullName     = 0x00
	opOpRegion     = 0x80 // after opExtPrefix
	opField        = 0x81 // after opExtPrefix
	regionSystemIO = 0x01

	// FieldFlags: DWordAcc (3), NoLock (bit 4 clear), WriteAsZeros
	// (UpdateRule 1 in bits 6:5).
	fieldDWordWriteZeros = 0x03 | 1<<5

	// MethodFlags bit 3: the method is Serialized.
	methodSerialized = 1 << 3
)

// Notify values (ACPI 6.5, 5.6.6 "Device Object Notifications").
const (
	notifyDeviceCheck  = 1 // a device may have appeared: re-enumerate it
	notifyEjectRequest = 3 // the platform asks the OS to release a device
)

// local is LocalN.
func local(n int) []byte {
	if n < 0 || n > 7 {
		panic("acpi: bad AML local number")
	}
	return []byte{opLocal0 + byte(n)}
}

// arg is ArgN.
func arg(n int) []byte {
	if n < 0 || n > 6 {
		panic("acpi: bad AML argument number")
	}
	return []byte{opArg0 + byte(n)}
}

// opRegion is OperationRegion(n, SystemIO, port, length).
func opRegionIO(n string, port uint16, length uint8) []byte {
	return concat([]byte{opExtPrefix, opOpRegion}, namePath(n), []byte{regionSystemIO},
		integer(uint64(port)), integer(uint64(length)))
}

// field32 is Field(region, DWordAcc, NoLock, WriteAsZeros) { names[0], 32,
// names[1], 32, ... }: consecutive 32-bit fields from the region's start.
func field32(region string, names ...string) []byte {
	body := concat(namePath(region), []byte{fieldDWordWriteZeros})
	for _, n := range names {
		// A NamedField's length is a PkgLength that counts bits, not
		// itself: 32 fits in its one-byte form.
		body = concat(body, nameSeg(n), []byte{32})
	}
	return append([]byte{opExtPrefix, opField}, pkgLength(body)...)
}

// methodFlags is Method(n, args, Serialized|NotSerialized) {body...}.
func methodFlags(n string, args int, serialized bool, body ...[]byte) []byte {
	if args < 0 || args > 7 {
		panic("acpi: AML method with bad argument count")
	}
	flags := byte(args)
	if serialized {
		flags |= methodSerialized
	}
	return append([]byte{opMethod}, pkgLength(concat(append([][]byte{namePath(n), {flags}}, body...)...))...)
}

// store is Store(src, dst).
func store(src, dst []byte) []byte { return concat([]byte{opStore}, src, dst) }

// and is And(a, b) with no target.
func and(a, b []byte) []byte { return concat([]byte{opAnd}, a, b, []byte{opNullName}) }

// shiftLeftTo is ShiftLeft(a, n, target): the result is stored in target.
func shiftLeftTo(a, n []byte, target string) []byte {
	return concat([]byte{opShiftLeft}, a, n, namePath(target))
}

// ifThen is If (predicate) {body...}.
func ifThen(predicate []byte, body ...[]byte) []byte {
	return append([]byte{opIf}, pkgLength(concat(append([][]byte{predicate}, body...)...))...)
}

// notify is Notify(object, value).
func notify(object string, value uint64) []byte {
	return concat([]byte{opNotify}, namePath(object), integer(value))
}

// call is a method invocation n(args...); the callee must take exactly
// len(args) arguments, which AML does not encode.
func call(n string, args ...[]byte) []byte {
	return concat(append([][]byte{namePath(n)}, args...)...)
}

// slotName is the name of the slot device of PCI device number d.
func slotName(d int) string {
	if d < 1 || d > 31 {
		panic(fmt.Sprintf("acpi: no hot-plug slot %d", d))
	}
	return fmt.Sprintf("S%02X", d)
}
