package stream

import (
	"context"
	"sync"
)

// hotWorkers is how many ranged reads the fill keeps in flight while it fetches the hot
// frames (hot.go): they are scattered, one or a few frames per read, so a distant store
// costs one round trip each; FillWorkers of them would leave the sandbox waiting for
// the round trips in turn. Once the hot frames have all been started, the extra workers
// end and FillWorkers go on in order.
const hotWorkers = 16

// fillCursor is where the background fill stands: the hot frames it has not taken yet,
// then the next frame of the sequential pass. Lock order: fillCursor.mu before File.mu.
type fillCursor struct {
	mu sync.Mutex
	// The fields below are guarded by mu.
	hot []int // hot frames not yet taken, in the list's order
	seq int   // the next frame of the sequential pass
}

// next picks the frames the fill fetches next and marks them busy: first the next hot
// frame not there nor being fetched (with the hot frames right after it in the list that
// follow it in the file, up to batch), then, unless hotOnly, up to batch absent frames
// in order from the sequential cursor. The frames readers wait for are fetched at once
// by want, ahead of both. n is 0 when nothing is left to start (for hotOnly: no hot
// frame is left).
func (f *File) next(c *fillCursor, batch int, hotOnly bool) (first, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	free := func(i int) bool { return !f.have[i] && !f.busy[i] }
	for len(c.hot) > 0 {
		i := c.hot[0]
		c.hot = c.hot[1:]
		if !free(i) {
			continue
		}
		f.busy[i] = true
		first, n = i, 1
		for n < batch && len(c.hot) > 0 && c.hot[0] == first+n && free(c.hot[0]) {
			f.busy[c.hot[0]] = true
			c.hot = c.hot[1:]
			n++
		}
		return first, n
	}
	if hotOnly {
		return 0, 0
	}
	for c.seq < len(f.have) && !free(c.seq) {
		c.seq++
	}
	first = c.seq
	for c.seq < len(f.have) && n < batch && free(c.seq) {
		f.busy[c.seq] = true
		c.seq++
		n++
	}
	return first, n
}

// fill runs the background download until every frame is there, the file failed or ctx
// ended: the frames of hot (valid indexes, no duplicates; nil: none) first, in that
// order, on hotWorkers goroutines, then the rest in order on workers goroutines, batch
// frames per fetch.
func (f *File) fill(ctx context.Context, workers, batch int, hot []int) {
	c := &fillCursor{hot: hot}
	extra := 0
	if len(hot) > 0 {
		extra = max(0, hotWorkers-workers)
	}
	var wg sync.WaitGroup
	for w := range workers + extra {
		hotOnly := w >= workers
		wg.Go(func() {
			for ctx.Err() == nil && f.Err() == nil {
				first, n := f.next(c, batch, hotOnly)
				if n == 0 {
					return
				}
				if err := f.fetchRetrying(ctx, first, n); err != nil {
					if ctx.Err() == nil {
						f.fail(err)
					}
					return
				}
			}
		})
	}
	wg.Wait()
	// Frames readers asked for may still be arriving.
	select {
	case <-f.ended:
	case <-ctx.Done():
	}
}
