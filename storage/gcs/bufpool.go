package gcs

import (
	"context"
	"sync"
)

// bufPool hands out at most n buffers of size bytes, shared by all uploads of a store, so
// upload memory is bounded by n*size however many uploads run. Buffers are reused while
// uploads are active and dropped for the garbage collector when the last one ends.
type bufPool struct {
	size   int
	sem    chan struct{}
	mu     sync.Mutex
	free   [][]byte
	active int
}

func newBufPool(n, size int) *bufPool {
	return &bufPool{size: size, sem: make(chan struct{}, max(n, 2))}
}

// begin marks an upload active; end marks it done and frees idle buffers after the last.
func (p *bufPool) begin() {
	p.mu.Lock()
	p.active++
	p.mu.Unlock()
}

func (p *bufPool) end() {
	p.mu.Lock()
	p.active--
	if p.active == 0 {
		p.free = nil
	}
	p.mu.Unlock()
}

// get waits for a buffer, or for ctx to end.
func (p *bufPool) get(ctx context.Context) ([]byte, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b, nil
	}
	return make([]byte, p.size), nil
}

// put returns a buffer got from get.
func (p *bufPool) put(b []byte) {
	p.mu.Lock()
	if p.active > 0 {
		p.free = append(p.free, b[:cap(b)])
	}
	p.mu.Unlock()
	<-p.sem
}
