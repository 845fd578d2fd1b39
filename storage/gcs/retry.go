package gcs

import (
	"context"
	"math/rand/v2"
	"time"

	gcs "cloud.google.com/go/storage"
)

// Retry limits for the requests the store retries itself (single-request uploads, which
// the client cannot retry without keeping a second copy of the data, and ranged reads).
const (
	maxAttempts  = 5
	firstBackoff = 200 * time.Millisecond
)

// retry runs f until it succeeds, fails with an error the client deems permanent, ctx
// ends, or maxAttempts. Callers only pass requests that are idempotent: a write with a
// generation precondition or a read of a fixed generation.
func (s *Store) retry(ctx context.Context, what string, f func(ctx context.Context) error) error {
	delay := firstBackoff
	for attempt := 1; ; attempt++ {
		err := f(ctx)
		if err == nil || attempt == maxAttempts || ctx.Err() != nil || !gcs.ShouldRetry(err) {
			return err
		}
		s.log.WithError(err).Debugf("%s: attempt %d failed, retrying", what, attempt)
		select {
		case <-time.After(delay/2 + rand.N(delay)):
		case <-ctx.Done():
			return err
		}
		delay *= 2
	}
}
