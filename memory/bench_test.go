package memory

import (
	"os"
	"strings"
	"testing"
)

// Set-up and first-touch costs of the two backings, to decide the default
// (see docs/architecture.md). The fault benchmark touches one byte in every
// 4 KiB page from the VMM, which takes the same kernel fault path that a
// vCPU's first access takes through KVM (handle_mm_fault on the host
// mapping); it reports ns per 4 KiB page.

var backings = []Backing{Anonymous, Memfd}

func logTHP(b *testing.B) {
	for _, f := range []string{"enabled", "shmem_enabled"} {
		s, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/" + f)
		if err == nil {
			b.Logf("THP %s: %s", f, strings.TrimSpace(string(s)))
		}
	}
}

func BenchmarkSetup1GiB(b *testing.B) {
	for _, bk := range backings {
		b.Run(bk.String(), func(b *testing.B) {
			for b.Loop() {
				m, err := NewWithOptions([]Layout{{GPA: 0, Size: 1 << 30}}, Options{Backing: bk})
				if err != nil {
					b.Fatal(err)
				}
				m.Close()
			}
		})
	}
}

func BenchmarkFirstTouch256MiB(b *testing.B) {
	logTHP(b)
	const size = 256 << 20
	for _, bk := range backings {
		b.Run(bk.String(), func(b *testing.B) {
			b.StopTimer()
			for i := 0; i < b.N; i++ {
				m, err := NewWithOptions([]Layout{{GPA: 0, Size: size}}, Options{Backing: bk})
				if err != nil {
					b.Fatal(err)
				}
				d := m.Regions()[0].Data
				b.StartTimer()
				for off := 0; off < size; off += DirtyPageSize {
					d[off] = 1
				}
				b.StopTimer()
				m.Close()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/(size/DirtyPageSize), "ns/page")
		})
	}
}

// The cost dirty tracking adds to the VMM's write paths: a 16-byte WriteAt
// (a used-ring element's size), a 4 KiB WriteAt, a used-index store and a
// SliceForWrite of a 4 KiB buffer, each with tracking off and on. The
// memory is touched first so no page fault is measured.
func BenchmarkTrackedWrites(b *testing.B) {
	m, err := New([]Layout{{GPA: 0, Size: 1 << 20}})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	for off := range m.Regions()[0].Data {
		m.Regions()[0].Data[off] = 0
	}
	small, page := make([]byte, 16), make([]byte, 4096)
	ops := []struct {
		name string
		f    func(i int)
	}{
		{"WriteAt16", func(i int) { m.WriteAt(small, int64(i%200)*4096+8) }},
		{"WriteAt4K", func(i int) { m.WriteAt(page, int64(i%200)*4096) }},
		{"StoreUint16", func(i int) { m.StoreUint16(uint64(i%200)*4096+2, uint16(i)) }},
		{"SliceForWrite4K", func(i int) { m.SliceForWrite(uint64(i%200)*4096, 4096) }},
		{"Slice4K", func(i int) { m.Slice(uint64(i%200)*4096, 4096) }},
	}
	for _, o := range ops {
		for _, on := range []bool{false, true} {
			name := o.name + "/off"
			if on {
				name = o.name + "/on"
			}
			b.Run(name, func(b *testing.B) {
				if on {
					m.EnableDirtyTracking()
					defer m.DisableDirtyTracking()
				}
				i := 0
				for b.Loop() {
					o.f(i)
					i++
				}
			})
		}
	}
}
