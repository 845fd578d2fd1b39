package gcs

import (
	"context"
	"fmt"
	"io"
	"sync"

	gcs "cloud.google.com/go/storage"
	"github.com/podsnapshot/podsnapshot/storage"
)

// Get streams the object at its current generation and checks its CRC32C at EOF. Objects
// larger than one read chunk are read as Options.Parallelism ranged reads at once, in
// chunks of Options.ReadChunkSize bytes, delivered in order; memory is about
// (Parallelism+1) * ReadChunkSize.
func (s *Store) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	if err := s.check(name); err != nil {
		return nil, err
	}
	obj := s.bucket.Object(s.key(name))
	a, err := obj.Attrs(ctx)
	if err != nil {
		return nil, s.err(name, err)
	}
	obj = obj.Generation(a.Generation) // all reads see one version
	url := s.URL(name)
	if a.Size <= s.o.ReadChunkSize || s.o.Parallelism <= 1 {
		r, err := obj.NewReader(ctx)
		if err != nil {
			return nil, s.err(name, err)
		}
		return storage.VerifyingReader(r, url, a.Size, a.CRC32C), nil
	}
	return storage.VerifyingReader(s.newParallelReader(ctx, obj, url, a.Size), url, a.Size, a.CRC32C), nil
}

// parallelReader reads an object as ranged reads of chunk bytes, up to n at once, and
// hands them out in order.
type parallelReader struct {
	cancel context.CancelFunc
	queue  chan chan chunk // chunks in object order, at most n+1 outstanding
	free   chan []byte     // the n+1 buffers, allocated on first use
	cur    chunk
	off    int // read position in cur
	err    error
	wg     sync.WaitGroup
}

type chunk struct {
	buf []byte
	n   int
	err error
}

func (s *Store) newParallelReader(ctx context.Context, obj *gcs.ObjectHandle, url string, size int64) *parallelReader {
	ctx, cancel := context.WithCancel(ctx)
	n := s.o.Parallelism
	p := &parallelReader{cancel: cancel, queue: make(chan chan chunk, n+1), free: make(chan []byte, n+1)}
	for range n + 1 {
		p.free <- nil
	}
	chunkSize := s.o.ReadChunkSize
	p.wg.Add(1)
	go func() { // schedules the reads
		defer p.wg.Done()
		defer close(p.queue)
		for off := int64(0); off < size; off += chunkSize {
			var buf []byte
			select {
			case buf = <-p.free:
			case <-ctx.Done():
				return
			}
			length := min(chunkSize, size-off)
			if buf == nil {
				buf = make([]byte, chunkSize)
			}
			res := make(chan chunk, 1)
			p.queue <- res
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				err := s.retry(ctx, "read "+url, func(ctx context.Context) error {
					r, err := obj.NewRangeReader(ctx, off, length)
					if err != nil {
						return err
					}
					defer r.Close()
					_, err = io.ReadFull(r, buf[:length])
					return err
				})
				if err != nil {
					err = fmt.Errorf("%s: read bytes %d-%d: %w", url, off, off+length-1, err)
				}
				res <- chunk{buf: buf, n: int(length), err: err}
			}()
		}
	}()
	return p
}

func (p *parallelReader) Read(b []byte) (int, error) {
	if p.err != nil {
		return 0, p.err
	}
	if p.off == p.cur.n {
		if p.cur.buf != nil {
			p.free <- p.cur.buf
			p.cur = chunk{}
		}
		res, ok := <-p.queue
		if !ok {
			p.err = io.EOF
			return 0, io.EOF
		}
		p.cur, p.off = <-res, 0
		if p.cur.err != nil {
			p.err = p.cur.err
			return 0, p.err
		}
	}
	n := copy(b, p.cur.buf[p.off:p.cur.n])
	p.off += n
	return n, nil
}

// Close stops the reads in flight and waits for them.
func (p *parallelReader) Close() error {
	p.cancel()
	go func() { // unblock the scheduler if it waits to queue
		for range p.queue {
		}
	}()
	p.wg.Wait()
	if p.err == nil {
		p.err = fmt.Errorf("read after close")
	}
	return nil
}
