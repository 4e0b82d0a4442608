package kvm

import (
	"encoding/binary"
	"testing"
)

// fakeRun is a kvm_run mapping filled by the test instead of the kernel.
func fakeRun(reason ExitReason, exit any) *VCPU {
	run := make([]byte, 3*4096)
	binary.NativeEndian.PutUint32(run[runExitReasonOffset:], uint32(reason))
	if exit != nil {
		if _, err := binary.Encode(run[runExitOffset:], binary.NativeEndian, exit); err != nil {
			panic(err)
		}
	}
	return &VCPU{fd: -1, run: run}
}

func TestExitIO(t *testing.T) {
	for _, c := range []struct {
		name string
		io   runIO
		ok   bool
	}{
		{"byte out", runIO{Direction: exitIOOut, Size: 1, Port: 0x3f8, Count: 1, Offset: 4096}, true},
		{"string in", runIO{Direction: exitIOIn, Size: 2, Port: 0x1f0, Count: 256, Offset: 4096}, true},
		{"fills mapping", runIO{Size: 4, Count: 2048, Offset: 4096}, true},
		{"past mapping", runIO{Size: 4, Count: 2049, Offset: 4096}, false},
		{"offset past end", runIO{Size: 1, Count: 1, Offset: 3 * 4096}, false},
		{"offset in head", runIO{Size: 1, Count: 1, Offset: 0}, false},
		{"huge count", runIO{Size: 4, Count: 0xffffffff, Offset: 4096}, false},
		{"huge offset", runIO{Size: 1, Count: 1, Offset: 1 << 63}, false},
		{"size 3", runIO{Size: 3, Count: 1, Offset: 4096}, false},
		{"size 8", runIO{Size: 8, Count: 1, Offset: 4096}, false},
		{"count 0", runIO{Size: 1, Count: 0, Offset: 4096}, false},
	} {
		c := c
		t.Run(c.name, func(t *testing.T) {
			v := fakeRun(ExitIO, &c.io)
			io, err := v.Exit().IO()
			if (err == nil) != c.ok {
				t.Fatalf("IO() error %v, want ok=%v", err, c.ok)
			}
			if !c.ok {
				return
			}
			if io.Out != (c.io.Direction == exitIOOut) || io.Size != int(c.io.Size) ||
				io.Port != c.io.Port || io.Count != int(c.io.Count) || len(io.Data) != int(c.io.Size)*int(c.io.Count) {
				t.Errorf("decoded %+v from %+v", io, c.io)
			}
			// Data must alias the mapping at data_offset: that is how an IN's
			// value reaches the guest.
			io.Data[0] = 0xa5
			if v.run[c.io.Offset] != 0xa5 {
				t.Error("IO data does not alias kvm_run")
			}
		})
	}
	if _, err := fakeRun(ExitMMIO, nil).Exit().IO(); err == nil {
		t.Error("IO() accepted an MMIO exit")
	}
}

func TestExitMMIO(t *testing.T) {
	m := runMMIO{PhysAddr: 0xfee00000, Len: 4, IsWrite: 1, Data: [8]byte{1, 2, 3, 4, 5}}
	v := fakeRun(ExitMMIO, &m)
	got, err := v.Exit().MMIO()
	if err != nil {
		t.Fatal(err)
	}
	if got.Addr != m.PhysAddr || !got.Write || string(got.Data) != "\x01\x02\x03\x04" {
		t.Errorf("decoded %+v", got)
	}
	got.Data[0] = 9
	if v.run[runExitOffset+8] != 9 {
		t.Error("MMIO data does not alias kvm_run")
	}
	for _, n := range []uint32{0, 9, 0xffffffff} {
		m.Len = n
		if _, err := fakeRun(ExitMMIO, &m).Exit().MMIO(); err == nil {
			t.Errorf("length %d accepted", n)
		}
	}
}

func TestExitOthers(t *testing.T) {
	se := runSystemEvent{Type: uint32(SystemEventReset), Ndata: 2, Data: [16]uint64{7, 8, 9}}
	ev, err := fakeRun(ExitSystemEvent, &se).Exit().SystemEvent()
	if err != nil || ev.Type != SystemEventReset || len(ev.Data) != 2 || ev.Data[1] != 8 {
		t.Errorf("system event %+v, %v", ev, err)
	}
	se.Ndata = 1000 // a count beyond the array is clamped, not trusted
	if ev, _ := fakeRun(ExitSystemEvent, &se).Exit().SystemEvent(); len(ev.Data) != 16 {
		t.Errorf("ndata 1000 gave %d words", len(ev.Data))
	}
	in := runInternal{Suberror: uint32(InternalErrorEmulation), Ndata: 99, Data: [16]uint64{1}}
	if ie := fakeRun(ExitInternalError, &in).Exit().Internal(); ie.Suberror != InternalErrorEmulation || len(ie.Data) != 16 {
		t.Errorf("internal %+v", ie)
	}
	fe := runFailEntry{EntryFailureReason: 0x21, CPU: 3}
	if f := fakeRun(ExitFailEntry, &fe).Exit().FailEntry(); f.HardwareReason != 0x21 || f.CPU != 3 {
		t.Errorf("fail entry %+v", f)
	}
	if s := ExitReason(999).String(); s != "exit(999)" {
		t.Errorf("String of unknown reason: %q", s)
	}
}

func TestFlagBytes(t *testing.T) {
	v := fakeRun(ExitIO, nil)
	v.SetRequestInterruptWindow(true)
	v.SetImmediateExit(true)
	if v.run[0] != 1 || v.run[1] != 1 || !v.ImmediateExit() {
		t.Fatalf("flags %v", v.run[:2])
	}
	v.SetImmediateExit(false)
	if v.run[0] != 1 || v.run[1] != 0 || v.ImmediateExit() {
		t.Fatalf("clearing immediate_exit touched its neighbour: %v", v.run[:2])
	}
}

// FuzzExit feeds arbitrary kvm_run contents to every accessor: none may
// panic, and any data slice returned must lie inside the mapping.
func FuzzExit(f *testing.F) {
	f.Add(uint32(ExitIO), []byte{1, 1, 0xf8, 3, 1, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0})
	f.Add(uint32(ExitIO), []byte{0, 4, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xf0, 0xff, 0, 0, 0, 0, 0, 0})
	f.Add(uint32(ExitMMIO), []byte{0, 0, 0xe0, 0xfe, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 0, 0, 0, 1})
	f.Add(uint32(ExitSystemEvent), []byte{2, 0, 0, 0, 0xff, 0, 0, 0})
	f.Add(uint32(ExitInternalError), []byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, reason uint32, exit []byte) {
		v := fakeRun(ExitReason(reason), nil)
		copy(v.run[runExitOffset:], exit)
		e := v.Exit()
		_ = e.Reason().String()
		if io, err := e.IO(); err == nil {
			if len(io.Data) != io.Size*io.Count || io.Count == 0 {
				t.Fatalf("IO %+v: data length %d", io, len(io.Data))
			}
		}
		if m, err := e.MMIO(); err == nil && (len(m.Data) == 0 || len(m.Data) > 8) {
			t.Fatalf("MMIO data length %d", len(m.Data))
		}
		if se, err := e.SystemEvent(); err == nil && len(se.Data) > 16 {
			t.Fatal("system event data too long")
		}
		_ = e.Internal()
		_ = e.FailEntry()
		_, _ = e.Exception()
		_ = e.HardwareExitReason()
	})
}
