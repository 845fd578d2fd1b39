package shaped

import (
	"sync"
	"time"
)

// bucket is a token bucket of bytes: rate bytes per second, at most burst bytes saved up
// while idle. Takers go into debt and sleep it off, so several buckets can be charged for
// the same bytes and the caller sleeps once, for the longest debt (a connection's bucket
// and the total one).
type bucket struct {
	rate  float64 // bytes per second, > 0
	burst float64 // bytes

	mu     sync.Mutex
	tokens float64   // guarded by mu; negative: debt, in bytes
	last   time.Time // guarded by mu; when tokens was last brought up to date
}

// newBucket returns a bucket of rate bytes per second, nil when rate is 0 or less
// (unlimited). Its burst is 5 ms of the rate, at least 64 KiB: enough that a sleep that
// oversleeps by a fraction of a millisecond loses no rate, small enough that a
// connection idle for a while cannot send much faster than the rate.
func newBucket(rate float64) *bucket {
	if rate <= 0 {
		return nil
	}
	burst := max(rate*0.005, 64<<10)
	return &bucket{rate: rate, burst: burst, tokens: burst, last: time.Now()}
}

// take charges n bytes at time now and returns how long the caller must wait before
// sending them (0: at once). A nil bucket is unlimited.
func (b *bucket) take(n int, now time.Time) time.Duration {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
	}
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}

// pace charges n bytes to every bucket given (nil ones are unlimited) and sleeps for the
// longest of their waits.
func pace(n int, buckets ...*bucket) {
	now := time.Now()
	var wait time.Duration
	for _, b := range buckets {
		wait = max(wait, b.take(n, now))
	}
	if wait > 0 {
		time.Sleep(wait)
	}
}
