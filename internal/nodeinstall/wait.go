package nodeinstall

import (
	"context"
	"fmt"
	"time"

	"github.com/podsnapshot/podsnapshot/deploy"
)

// restartAndWait restarts containerd when why is not empty, or when the running
// containerd's answer differs from want although its files are in place (an earlier run
// stopped between writing them and restarting containerd; the next run would otherwise
// see nothing changed and wait in vain). It then waits until containerd serves the
// handler (want true) or no longer does (want false). ctx bounds it all (WaitTimeout).
func (o *Options) restartAndWait(ctx context.Context, res *Result, why string, want bool) error {
	if why == "" {
		// containerd down (an error) is no reason: it reads the files as it starts.
		if served, err := o.Checker.Serves(ctx, deploy.RuntimeHandler); err == nil && served != want {
			why = fmt.Sprintf("the running containerd has not read the files in place: handler %q served: %t, want %t", deploy.RuntimeHandler, served, want)
		}
	}
	if why != "" {
		res.RestartAsked = true
		restarted, err := o.Restarter.Restart(ctx, why)
		if err != nil {
			return err
		}
		res.Restarted = restarted
	}
	return o.waitHandler(ctx, want)
}

// waitHandler asks containerd every PollInterval until it serves the runtime handler
// (want true) or answers without it (want false). Errors (containerd down or starting)
// are retried until ctx ends; the timeout error carries the last answer.
func (o *Options) waitHandler(ctx context.Context, want bool) error {
	what := fmt.Sprintf("serve runtime handler %q", deploy.RuntimeHandler)
	if !want {
		what = fmt.Sprintf("stop serving runtime handler %q", deploy.RuntimeHandler)
	}
	if d, ok := ctx.Deadline(); ok {
		o.Log.Infof("waiting up to %s for containerd to %s", time.Until(d).Round(time.Second), what)
	}
	tick := time.NewTicker(o.poll())
	defer tick.Stop()
	var last error
	for {
		served, err := o.Checker.Serves(ctx, deploy.RuntimeHandler)
		if err == nil && served == want {
			o.Log.Infof("containerd: %s: done", what)
			return nil
		}
		last = err
		if err == nil {
			last = fmt.Errorf("containerd answers, handler served: %t", served)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("containerd did not %s in time (%w; last answer: %w): containerd's log says why (journalctl -u containerd)",
				what, ctx.Err(), last)
		case <-tick.C:
		}
	}
}
