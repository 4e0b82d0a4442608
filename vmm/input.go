package vmm

import (
	"io"
	"sync"
)

// inputHub reads the process's console input (stdin) on one goroutine for
// the life of the process and hands it to whichever VM is attached. A
// reboot with on_reboot=restart builds a new VM on the same stdin: without
// the hub each VM started a reader of its own that outlived it, so
// goroutines piled up and keystrokes went to dead VMs. Input that arrives
// while no VM is attached waits (one chunk) for the next.
type inputHub struct {
	src   io.Reader
	start sync.Once
	// chunks carries what the pump read, one chunk at a time, to the
	// port that asks first; closed when src ends.
	chunks chan []byte
}

func newInputHub(src io.Reader) *inputHub {
	return &inputHub{src: src, chunks: make(chan []byte)}
}

func (h *inputHub) pump() {
	defer close(h.chunks)
	for {
		buf := make([]byte, 4096)
		n, err := h.src.Read(buf)
		if n > 0 {
			h.chunks <- buf[:n]
		}
		if err != nil {
			return
		}
	}
}

// attach returns a reader of the input for one VM: Close (the VM's
// closer) ends its reads with io.EOF, so the VM's input goroutines end
// with it, and leaves the rest of the input to the next VM.
func (h *inputHub) attach() *inputPort {
	h.start.Do(func() { go h.pump() })
	return &inputPort{h: h, closed: make(chan struct{})}
}

// inputPort is one VM's view of the input. One goroutine reads it.
type inputPort struct {
	h       *inputHub
	closed  chan struct{}
	once    sync.Once
	pending []byte // the rest of a chunk longer than the last Read
}

var _ io.ReadCloser = (*inputPort)(nil)

func (p *inputPort) Read(b []byte) (int, error) {
	if len(p.pending) == 0 {
		select {
		case <-p.closed:
			return 0, io.EOF
		default:
		}
		select {
		case c, ok := <-p.h.chunks:
			if !ok {
				return 0, io.EOF
			}
			p.pending = c
		case <-p.closed:
			return 0, io.EOF
		}
	}
	n := copy(b, p.pending)
	p.pending = p.pending[n:]
	return n, nil
}

func (p *inputPort) Close() error {
	p.once.Do(func() { close(p.closed) })
	return nil
}

// ShareInput puts stdio's input behind one reader for all the VMs built
// with the result (Builder, Restorer, Receiver): each VM reads it while it
// lives, and what arrives between two VMs goes to the next. Builder and
// Restorer do this themselves; call it once when giving one stdio to
// several of them, so that they share a reader.
func ShareInput(stdio IO) IO { return shareInput(stdio) }

func shareInput(stdio IO) IO {
	if stdio.Stdin != nil && stdio.hub == nil {
		stdio.hub = newInputHub(stdio.Stdin)
	}
	return stdio
}

// input returns the VM's reader of stdio's input: a port of its own on
// the hub (closed with the VM) when there is one, Stdin itself otherwise.
func (v *VM) input(stdio IO) io.Reader {
	if stdio.hub == nil {
		return stdio.Stdin
	}
	p := stdio.hub.attach()
	v.closers = append(v.closers, p)
	return p
}
