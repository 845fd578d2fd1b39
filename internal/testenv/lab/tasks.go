package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// CtrTimeout bounds every ctr call, so a wedged containerd fails the run rather than
// hanging it.
var CtrTimeout = 2 * time.Minute

// Ctr runs `ctr --address SOCK --namespace NS args...` and returns its stdout; a
// non-zero exit is an error carrying stderr.
func (l *Lab) Ctr(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, CtrTimeout)
	defer cancel()
	all := append([]string{"--address", l.Address, "--namespace", l.Namespace}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(l.DepsBin, "ctr"), all...)
	cmd.Env = l.env
	// Own process group: a Ctrl-C reaches only us; we cancel ctx, which kills ctr.
	cmd.SysProcAttr = ownGroup()
	cmd.WaitDelay = 5 * time.Second // a killed ctr's children may hold its pipes
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if cause := context.Cause(ctx); cause != nil {
			err = fmt.Errorf("%w (%w)", err, cause)
		}
		return stdout.String(), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// CLI runs the podsnapshot CLI against the lab's shim config and store; stdout and
// stderr are returned together.
func (l *Lab) CLI(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, CtrTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(l.OutBin, CLIBinary), append([]string{"--config", l.ShimConfig}, args...)...)
	cmd.Env = l.env
	cmd.SysProcAttr = ownGroup()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("podsnapshot %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Task is a detached container started by Run.
type Task struct {
	ID      string
	LogPath string // the task's stdout and stderr
	// Output follows LogPath; lines carry the moment they appeared.
	Output *Tail
	// Invoked is when `ctr run` was started, Returned when it came back (Create and Start,
	// restore included, are over then).
	Invoked, Returned time.Time
}

// Run starts command (e.g. "slowinit", "-mib", "64") in a new detached container id of
// the workloads image, its output in a file that the returned Task follows. Close removes
// the container if the caller has not (Remove).
func (l *Lab) Run(ctx context.Context, id string, labels []string, command ...string) (*Task, error) {
	runtime := []string{"--runtime", RuntimeType, "--runtime-config-path", l.ShimConfig}
	for _, lb := range labels {
		runtime = append(runtime, "--label", lb)
	}
	return l.RunWith(ctx, id, runtime, command...)
}

// RunWith is Run with other `ctr run` options than our runtime and the labels: for
// instance "--runtime", "io.containerd.runc.v2", "--runc-binary", PATH.
func (l *Lab) RunWith(ctx context.Context, id string, options []string, command ...string) (*Task, error) {
	t := &Task{ID: id, LogPath: filepath.Join(l.Dir, "out-"+id+".log")}
	args := append([]string{"run", "-d", "--log-uri", "file://" + t.LogPath}, options...)
	args = append(append(args, l.Image, id), command...)
	t.Output = Follow(t.LogPath)
	l.mu.Lock()
	l.tails = append(l.tails, t.Output)
	l.containers = append(l.containers, id) // before ctr runs: a half-created one counts
	l.mu.Unlock()
	t.Invoked = time.Now()
	_, err := l.Ctr(ctx, args...)
	t.Returned = time.Now()
	if err != nil {
		return nil, err
	}
	return t, nil
}

// WaitOutput waits, like t.Output.Wait, for a line of the task's output that satisfies
// match, but gives up as soon as the task is no longer running: a workload that crashed
// fails the wait at once instead of at the timeout.
func (l *Lab) WaitOutput(ctx context.Context, t *Task, timeout time.Duration, what string, match func(string) bool) (Line, error) {
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-tick.C:
			}
			if status, err := l.TaskStatus(wctx, t.ID); err == nil && status != "RUNNING" && status != "PAUSED" {
				// Let the last lines it wrote reach the Tail before giving up.
				time.Sleep(10 * tailPoll)
				cancel(fmt.Errorf("task %s is no longer running (status %s)", t.ID, status))
				return
			}
		}
	}()
	line, err := t.Output.Wait(wctx, timeout, what, match)
	if err != nil && ctx.Err() == nil && wctx.Err() != nil {
		// The task stopped; the line may still have arrived just before.
		if l2, err2 := t.Output.Wait(ctx, 0, what, match); err2 == nil {
			return l2, nil
		}
	}
	return line, err
}

// TaskStatus returns the status `ctr task ls` shows for id (RUNNING, STOPPED, ...), or
// "absent" when there is no such task.
func (l *Lab) TaskStatus(ctx context.Context, id string) (string, error) {
	out, err := l.Ctr(ctx, "task", "ls")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			return f[2], nil
		}
	}
	return "absent", nil
}

// Remove kills container id's task, deletes it and the container, and forgets it.
func (l *Lab) Remove(ctx context.Context, id string) error {
	// `task rm` deletes a stopped task; `task rm -f` SIGKILLs a running one and waits for
	// it to exit before deleting it. A stopped task is not forced: containerd's runc shim
	// driving runsc (the bench's reference) fails the kill of a sandbox that is gone.
	_, taskErr := l.Ctr(ctx, "task", "rm", id)
	if taskErr != nil && !strings.Contains(taskErr.Error(), "not found") {
		_, taskErr = l.Ctr(ctx, "task", "rm", "-f", id)
	}
	if taskErr != nil && strings.Contains(taskErr.Error(), "not found") {
		taskErr = nil // never started, or already deleted
	}
	_, cErr := l.Ctr(ctx, "container", "rm", id)
	if cErr != nil && strings.Contains(cErr.Error(), "not found") {
		cErr = nil
	}
	if err := errors.Join(taskErr, cErr); err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	l.mu.Lock()
	for i, c := range l.containers {
		if c == id {
			l.containers = append(l.containers[:i], l.containers[i+1:]...)
			break
		}
	}
	l.mu.Unlock()
	return nil
}

// Log follows containerd's log, which carries the shim's lines.
func (l *Lab) Log() *Tail { return l.log }

// ShimLine waits for the shim's log line about container id that contains want (for
// example "podsnapshot: committed") and returns it, parsed.
func (l *Lab) ShimLine(ctx context.Context, timeout time.Duration, id, want string) (Line, LogEntry, error) {
	line, err := l.log.Wait(ctx, timeout, fmt.Sprintf("%q for container %s", want, id), func(s string) bool {
		return strings.Contains(s, want) && strings.Contains(s, " id="+id+" ")
	})
	if err != nil {
		return Line{}, LogEntry{}, err
	}
	return line, ParseLogEntry(line.Text), nil
}
