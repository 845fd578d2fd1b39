package lab

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// InterruptContext returns a context that the first Ctrl-C (or SIGTERM) cancels, with
// the signal as its cause. Later signals are only reported: cleanup runs with its own
// bounded timeouts, and an interrupted cleanup would leave sandboxes and mounts behind.
func InterruptContext(logf func(format string, args ...any)) context.Context {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		for s := range sigs {
			if ctx.Err() == nil {
				logf("%v: stopping; cleaning up", s)
				cancel(fmt.Errorf("interrupted (%v)", s))
			} else {
				logf("%v: still cleaning up, please wait (bounded to a few minutes)", s)
			}
		}
	}()
	return ctx
}
