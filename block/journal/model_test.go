package journal

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
)

const modelSize = 192<<10 + 1536

// model is what the journal should hold: the current contents and the
// contents at every point it has made.
type model struct {
	t      *testing.T
	rng    *rand.Rand
	mem    *blocktest.Mem // the base
	path   string
	opts   Options
	j      *Journal
	cur    []byte
	points map[uint64][]byte
	marks  int
	clock  time.Time
}

func newModel(t *testing.T, seed uint64, opts Options) *model {
	m := &model{t: t, rng: rand.New(rand.NewPCG(seed, 99)), mem: blocktest.NewMem(modelSize),
		path: filepath.Join(t.TempDir(), "j.log"), opts: opts, points: map[uint64][]byte{}, clock: time.Unix(1e9, 0)}
	init := make([]byte, modelSize)
	fillRand(m.rng, init)
	m.mem.WriteAt(init, 0)
	m.cur = clone(init)
	m.points[0] = clone(init)
	m.opts.Now = func() time.Time { m.clock = m.clock.Add(time.Second); return m.clock }
	m.open()
	return m
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

func fillRand(rng *rand.Rand, p []byte) {
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
}

func (m *model) open() {
	j, err := OpenJournal(keepOpen{m.mem}, m.path, m.opts)
	if err != nil {
		m.t.Fatalf("open: %v", err)
	}
	m.j = j
}

// status lists the journal and records, under their ids, the points that
// appeared since the last look: they hold what the disk held then.
func (m *model) learn(content []byte) Status {
	st, err := m.j.List()
	if err != nil {
		m.t.Fatal(err)
	}
	for _, p := range st.Points {
		if _, ok := m.points[p.ID]; !ok {
			m.points[p.ID] = clone(content)
		}
	}
	return st
}

func (m *model) check(what string) {
	m.t.Helper()
	got := make([]byte, modelSize)
	if _, err := m.j.ReadAt(got, 0); err != nil {
		m.t.Fatalf("%s: read: %v", what, err)
	}
	if i := firstDiff(got, m.cur); i >= 0 {
		m.t.Fatalf("%s: byte %d is %#x, the model says %#x", what, i, got[i], m.cur[i])
	}
	st, err := m.j.List()
	if err != nil {
		m.t.Fatal(err)
	}
	for _, p := range st.Points {
		if _, ok := m.points[p.ID]; !ok {
			m.t.Fatalf("%s: point %d appeared unseen", what, p.ID)
		}
		if p.Current && !st.Pending && !bytes.Equal(m.points[p.ID], m.cur) {
			m.t.Fatalf("%s: at point %d with nothing pending, but the disk differs from the point", what, p.ID)
		}
	}
	// The base holds exactly the state of the base point.
	if i := firstDiff(m.mem.Bytes(), m.points[st.Points[0].ID]); i >= 0 {
		m.t.Fatalf("%s: base byte %d differs from point %d's", what, i, st.Points[0].ID)
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	if len(b) > len(a) {
		return len(a)
	}
	return -1
}

// step does one random operation; it returns whether it may have added
// a record that is not a write (a barrier).
func (m *model) step() string { return m.stepN(m.rng.IntN(100)) }

// stepN does the operation that the draw r (0..99) picks: below 90 only
// writes, discards, flushes, marks and reverts.
func (m *model) stepN(r int) string {
	rng := m.rng
	switch {
	case r < 45:
		off := rng.Int64N(modelSize)
		n := 1 + rng.Int64N(min(modelSize-off, 24<<10))
		p := make([]byte, n)
		fillRand(rng, p)
		if _, err := m.j.WriteAt(p, off); err != nil {
			m.t.Fatal(err)
		}
		copy(m.cur[off:], p)
		return "write"
	case r < 52:
		off := rng.Int64N(modelSize)
		n := rng.Int64N(min(modelSize-off, 40<<10) + 1)
		var err error
		if rng.IntN(2) == 0 {
			err = m.j.Discard(off, n)
		} else {
			err = m.j.WriteZeroes(off, n, true)
		}
		if err != nil {
			m.t.Fatal(err)
		}
		clear(m.cur[off : off+n])
		return "zero"
	case r < 70:
		if err := m.j.Flush(); err != nil {
			m.t.Fatal(err)
		}
		m.learn(m.cur)
		return "flush"
	case r < 76:
		m.marks++
		name := "m" + strconv.Itoa(m.marks)
		if _, err := m.j.Mark(name); err != nil {
			m.t.Fatal(err)
		}
		m.learn(m.cur)
		return "mark"
	case r < 90:
		st := m.learn(m.cur)
		p := st.Points[rng.IntN(len(st.Points))]
		target := strconv.FormatUint(p.ID, 10)
		if p.Name != "" && rng.IntN(2) == 0 {
			target = p.Name
		}
		// Revert turns pending writes into a point first, which holds
		// the contents before the revert.
		before := clone(m.cur)
		if err := m.j.Revert(target); err != nil {
			m.t.Fatal(err)
		}
		m.learn(before)
		m.cur = clone(m.points[p.ID])
		return "revert " + target
	case r < 95:
		if m.opts.Undo {
			return "none"
		}
		if err := m.j.Flush(); err != nil {
			m.t.Fatal(err)
		}
		st := m.learn(m.cur)
		cur := 0
		for i, p := range st.Points {
			if p.Current {
				cur = i
			}
		}
		p := st.Points[rng.IntN(cur+1)]
		if err := m.j.Commit(strconv.FormatUint(p.ID, 10)); err != nil {
			m.t.Fatal(err)
		}
		return fmt.Sprint("commit ", p.ID)
	case r < 97:
		if err := m.j.Compact(); err != nil {
			m.t.Fatal(err)
		}
		m.learn(m.cur)
		return "compact"
	default:
		if m.opts.Undo {
			return "none"
		}
		if err := m.j.Close(); err != nil {
			m.t.Fatal(err)
		}
		m.open()
		m.learn(m.cur)
		return "reopen"
	}
}

// TestModel: random writes, discards, flushes, marks, reverts (by id and
// by name), commits, compactions and reopenings against the model; after
// each step the disk equals the model, the current point (when nothing is
// pending) equals its recorded contents, and the base equals the base
// point's. With small retention, drops and automatic commits happen too.
func TestModel(t *testing.T) {
	for _, c := range []struct {
		name string
		opts Options
	}{
		{"default", Options{}},
		{"keep3", Options{KeepPoints: 3}},
		{"age", Options{KeepAge: 5 * time.Second}},
		{"maxlog", Options{MaxLog: 256 << 10}},
		{"undo-keep2", Options{Undo: true, KeepPoints: 2}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel() // mostly waiting for fdatasync
			for seed := uint64(1); seed <= 3; seed++ {
				m := newModel(t, seed, c.opts)
				var hist []string
				for i := 0; i < 250; i++ {
					hist = append(hist, m.step())
					if len(hist) > 8 {
						hist = hist[1:]
					}
					m.check(fmt.Sprintf("seed %d step %d (last: %v)", seed, i, hist))
				}
				if err := m.j.Close(); err != nil {
					t.Fatal(err)
				}
				if c.opts.Undo && !bytes.Equal(m.mem.Bytes(), m.points[0]) {
					t.Fatal("undo disk changed its base")
				}
			}
		})
	}
}

// TestCrash: the journal's log cut at every kind of point (a random
// length, with or without garbage after it, or with one byte flipped)
// reopens at the last completed flush, mark or revert before the cut,
// never in between.
func TestCrash(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		crashRun(t, seed)
	}
}

type opSpan struct {
	end0, end1    int64
	before, after []byte
}

func crashRun(t *testing.T, seed uint64) {
	// The default retention commits nothing in 300 steps, and without
	// automatic compaction the log is only ever appended to, so one copy
	// of it stands for every moment of the run.
	m := newModel(t, seed, Options{noAutoCompact: true})
	init := clone(m.points[0])
	var spans []opSpan
	for i := 0; i < 300; i++ {
		end0, before := m.j.end, clone(m.cur)
		what := m.stepN(m.rng.IntN(90))
		if m.j.end != end0 && what != "write" && what != "zero" {
			spans = append(spans, opSpan{end0, m.j.end, before, clone(m.cur)})
		}
	}
	logBytes, err := os.ReadFile(m.path)
	if err != nil {
		t.Fatal(err)
	}
	// Where records start and where barriers end, from the log itself.
	var starts, barriers []int64
	scanLog(bytes.NewReader(logBytes), headerSize, int64(len(logBytes)), 1, true, func(r *record) error {
		starts = append(starts, r.pos)
		if r.typ != recWrite && r.typ != recZero {
			barriers = append(barriers, r.pos+r.size())
		}
		return nil
	})
	expect := func(cut int64) []byte {
		e := int64(headerSize)
		for _, b := range barriers {
			if b <= cut {
				e = b
			}
		}
		if e == headerSize {
			return init
		}
		for _, s := range spans {
			if e == s.end1 {
				return s.after
			}
			if e > s.end0 && e < s.end1 {
				return s.before
			}
		}
		t.Fatalf("seed %d: barrier at %d belongs to no operation (spans %v)", seed, e, spanEnds(spans))
		return nil
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	for trial := 0; trial < 40; trial++ {
		data := clone(logBytes)
		var want []byte
		var how string
		switch trial % 3 {
		case 0:
			cut := headerSize + rng.Int64N(int64(len(data))-headerSize+1)
			data, want, how = data[:cut], expect(cut), fmt.Sprint("cut at ", cut)
		case 1:
			cut := headerSize + rng.Int64N(int64(len(data))-headerSize+1)
			junk := make([]byte, rng.IntN(300))
			fillRand(rng, junk)
			data, want, how = append(data[:cut], junk...), expect(cut), fmt.Sprint("cut at ", cut, " plus junk")
		case 2:
			y := headerSize + rng.Int64N(int64(len(data))-headerSize)
			data[y] ^= 1 << rng.IntN(8)
			start := int64(headerSize)
			for _, s := range starts {
				if s <= y {
					start = s
				}
			}
			want, how = expect(start), fmt.Sprint("bit flipped at ", y)
		}
		path := filepath.Join(t.TempDir(), "crash.log")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		base := blocktest.NewMem(modelSize)
		base.WriteAt(init, 0)
		j, err := OpenJournal(base, path, Options{})
		if err != nil {
			t.Fatalf("seed %d, %s: reopen: %v", seed, how, err)
		}
		got := make([]byte, modelSize)
		if _, err := j.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if i := firstDiff(got, want); i >= 0 {
			t.Fatalf("seed %d, %s: byte %d is %#x, want %#x (the state at the last barrier)", seed, how, i, got[i], want[i])
		}
		// The reopened journal goes on working: write, flush, reopen.
		j.WriteAt([]byte("after"), 100)
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
		j, err = OpenJournal(keepOpen{base}, path, Options{})
		if err != nil {
			t.Fatalf("seed %d, %s: second reopen: %v", seed, how, err)
		}
		j.ReadAt(got[:5], 100)
		if string(got[:5]) != "after" {
			t.Fatalf("seed %d, %s: a write after recovery was lost", seed, how)
		}
		j.Close()
	}
}

var _ block.Discarder = (*Journal)(nil)

func spanEnds(s []opSpan) (out [][2]int64) {
	for _, x := range s {
		out = append(out, [2]int64{x.end0, x.end1})
	}
	return out
}

// TestInterruptedCommit: a commit cut off after its intent record, with
// the base holding any mix of old and new data, is finished on the next
// open: the base ends up at the committed point.
func TestInterruptedCommit(t *testing.T) {
	m := newModel(t, 5, Options{noAutoCompact: true})
	for i := 0; i < 60; i++ {
		m.stepN(m.rng.IntN(70)) // writes, discards, flushes, marks
	}
	m.j.Flush()
	st := m.learn(m.cur)
	target := st.Points[len(st.Points)-1].ID
	oldBase := clone(m.mem.Bytes())
	if err := m.j.Commit(""); err != nil {
		t.Fatal(err)
	}
	m.j.Close()
	newBase := clone(m.mem.Bytes())
	if !bytes.Equal(newBase, m.points[target]) {
		t.Fatal("commit did not put the point into the base")
	}
	logBytes, _ := os.ReadFile(m.path)
	var begin int64 = -1
	scanLog(bytes.NewReader(logBytes), headerSize, int64(len(logBytes)), 1, true, func(r *record) error {
		if r.typ == recCommitBegin {
			begin = r.pos + r.size()
		}
		return nil
	})
	if begin < 0 {
		t.Fatal("no commit record in the log")
	}
	rng := rand.New(rand.NewPCG(3, 3))
	for trial := 0; trial < 5; trial++ {
		// The base as a crash could leave it: each 4 KiB block old or new.
		mixed := clone(oldBase)
		for off := 0; off < len(mixed); off += 4096 {
			if rng.IntN(2) == 0 {
				copy(mixed[off:min(off+4096, len(mixed))], newBase[off:])
			}
		}
		path := filepath.Join(t.TempDir(), "c.log")
		os.WriteFile(path, logBytes[:begin], 0o600)
		base := blocktest.NewMem(modelSize)
		base.WriteAt(mixed, 0)
		j, err := OpenJournal(keepOpen{base}, path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		st, _ := j.List()
		if st.Points[0].ID != target {
			t.Fatalf("after recovery the base point is %d, want %d", st.Points[0].ID, target)
		}
		if !bytes.Equal(base.Bytes(), newBase) {
			t.Fatal("recovery did not finish the commit into the base")
		}
		got := make([]byte, modelSize)
		j.ReadAt(got, 0)
		if !bytes.Equal(got, m.points[target]) {
			t.Fatal("after recovery the disk is not at the committed point")
		}
		j.Close()
	}
}
