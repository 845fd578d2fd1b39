package storage

import (
	"hash"
	"sync"
)

// asyncHash hashes what is written to it in its own goroutine, so hashing runs beside
// compression or decompression instead of after it. It copies writes into a few chunks
// (hashChunks * hashChunkSize bytes of memory) and hashes them in order.
type asyncHash struct {
	h    hash.Hash
	n    int64 // bytes written
	full chan []byte
	free chan []byte
	cur  []byte
	done chan struct{}
	once sync.Once
}

const (
	hashChunks    = 4
	hashChunkSize = 1 << 20
)

func newAsyncHash(h hash.Hash) *asyncHash {
	a := &asyncHash{h: h, full: make(chan []byte, hashChunks), free: make(chan []byte, hashChunks), done: make(chan struct{})}
	for range hashChunks {
		a.free <- nil
	}
	go func() {
		defer close(a.done)
		for b := range a.full {
			a.h.Write(b)
			a.free <- b[:0]
		}
	}()
	return a
}

// Write copies p for hashing; it never fails.
func (a *asyncHash) Write(p []byte) (int, error) {
	n := len(p)
	a.n += int64(n)
	for len(p) > 0 {
		if a.cur == nil {
			a.cur = <-a.free
			if a.cur == nil {
				a.cur = make([]byte, 0, hashChunkSize)
			}
		}
		c := min(len(p), cap(a.cur)-len(a.cur))
		a.cur = append(a.cur, p[:c]...)
		p = p[c:]
		if len(a.cur) == cap(a.cur) {
			a.full <- a.cur
			a.cur = nil
		}
	}
	return n, nil
}

// Sum waits for the hashing to finish and returns the hash of everything written.
func (a *asyncHash) Sum() []byte {
	if len(a.cur) > 0 {
		a.full <- a.cur
		a.cur = nil
	}
	a.stop()
	return a.h.Sum(nil)
}

// stop ends the goroutine; calling it again, or after Sum, does nothing.
func (a *asyncHash) stop() {
	a.once.Do(func() { close(a.full) })
	<-a.done
}
