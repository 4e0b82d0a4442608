package sink_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"

	"github.com/viovmm/vio/devices/sink"
)

// gate is a writer whose first Write blocks until released, reporting
// that it has been entered.
type gate struct {
	entered chan struct{}
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	b       bytes.Buffer
}

func (g *gate) Write(p []byte) (int, error) {
	first := false
	g.once.Do(func() { first = true })
	if first {
		close(g.entered)
		<-g.release
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.b.Write(p)
}

func TestAsyncWriterNeverBlocks(t *testing.T) {
	g := &gate{entered: make(chan struct{}), release: make(chan struct{})}
	a := sink.NewAsyncWriter(g, 4)
	if n, err := a.Write([]byte("ab")); n != 2 || err != nil {
		t.Fatal(n, err)
	}
	<-g.entered // the goroutine holds "ab" and is stuck in the writer
	// With the writer stuck, writes still return at once; 4 bytes fit.
	if n, err := a.Write([]byte("cdefgh")); n != 6 || err != nil {
		t.Fatal(n, err)
	}
	if d := a.Dropped(); d != 2 {
		t.Fatalf("dropped %d, want 2", d)
	}
	close(g.release)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if got := g.b.String(); got != "abcdef" {
		t.Fatalf("output %q", got)
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, sink.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
}

type failing struct{ n int }

func (f *failing) Write(p []byte) (int, error) {
	f.n++
	return 0, errors.New("broken pipe")
}

func TestAsyncWriterError(t *testing.T) {
	f := &failing{}
	a := sink.NewAsyncWriter(f, 64)
	a.Write([]byte("one"))
	if err := a.Close(); err == nil {
		t.Fatal("Close hid the writer's error")
	}
	if f.n != 1 {
		t.Fatalf("writer called %d times", f.n)
	}
}
