package runsc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// One method per runsc command: each takes the command's options struct (opts.go) and
// runs exactly what its args method builds.

// do runs the command sub (from an options struct's args) with io attached when not nil,
// and returns what it printed on stdout. name labels errors, e.g. "kill c1".
func (r *Runsc) do(ctx context.Context, name string, sub []string, io IO) ([]byte, error) {
	cmd := r.command(ctx, sub)
	if io != nil {
		io.Set(cmd)
	}
	return r.run(cmd, name, nil)
}

// Create runs `runsc create` for the container id from the OCI bundle directory.
func (r *Runsc) Create(ctx context.Context, id, bundle string, o CreateOpts) error {
	_, err := r.do(ctx, "create "+id, o.args(id, bundle), o.IO)
	return err
}

// Start runs `runsc start`.
func (r *Runsc) Start(ctx context.Context, id string, o StartOpts) error {
	_, err := r.do(ctx, "start "+id, o.args(id), o.IO)
	return err
}

// Restore runs `runsc restore --detach` for a created container: it is the start of a
// restored container.
func (r *Runsc) Restore(ctx context.Context, id string, o RestoreOpts) error {
	_, err := r.do(ctx, "restore "+id, o.args(id), o.IO)
	return err
}

// Checkpoint runs `runsc checkpoint`.
func (r *Runsc) Checkpoint(ctx context.Context, id string, o CheckpointOpts) error {
	_, err := r.do(ctx, "checkpoint "+id, o.args(id), nil)
	return err
}

// WaitResult is the JSON `runsc wait` prints for a container's exit.
type WaitResult struct {
	ID         string `json:"id"`
	ExitStatus int    `json:"exitStatus"`
}

// Wait runs `runsc wait`. Plain, it returns the container's exit status (a wait status
// as runsc reports it: the exit code, or 128+signal). With o.Checkpoint or o.Restore it
// returns 0 once that event completed, or the error it completed with (the status is
// then not parsed: runsc reports the event, not an exit).
func (r *Runsc) Wait(ctx context.Context, id string, o WaitOpts) (int, error) {
	sub := o.args(id)
	out, err := r.run(r.command(ctx, sub), strings.Join(sub, " "), o.Started) // e.g. "wait --checkpoint c1"
	if err != nil {
		return -1, err
	}
	if o.Checkpoint || o.Restore {
		return 0, nil
	}
	var res WaitResult
	if err := json.Unmarshal(out, &res); err != nil {
		return -1, fmt.Errorf("runsc wait %s: parse %q: %w", id, out, err)
	}
	return res.ExitStatus, nil
}

// Exec runs `runsc exec --detach --process FILE`; the process spec is written to a file
// in dir (the container bundle) and removed afterwards.
func (r *Runsc) Exec(ctx context.Context, id string, spec specs.Process, dir string, o ExecOpts) error {
	f, err := os.CreateTemp(dir, "exec-process-*.json")
	if err != nil {
		return fmt.Errorf("runsc exec %s: %w", id, err)
	}
	defer os.Remove(f.Name())
	if err := json.NewEncoder(f).Encode(spec); err != nil {
		f.Close()
		return fmt.Errorf("runsc exec %s: write process spec: %w", id, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("runsc exec %s: write process spec: %w", id, err)
	}
	_, err = r.do(ctx, "exec "+id, o.args(id, f.Name()), o.IO)
	return err
}

// Kill runs `runsc kill`: o.Signal to the container's init, to one process by its
// sandbox pid (o.Pid), or to all its processes (o.All).
func (r *Runsc) Kill(ctx context.Context, id string, o KillOpts) error {
	_, err := r.do(ctx, "kill "+id, o.args(id), nil)
	return err
}

// Delete runs `runsc delete`; o.Force also kills a running container.
func (r *Runsc) Delete(ctx context.Context, id string, o DeleteOpts) error {
	_, err := r.do(ctx, "delete "+id, o.args(id), nil)
	return err
}

// State is the subset of `runsc state` output the shim uses (the OCI state).
type State struct {
	ID     string `json:"id"`
	Pid    int    `json:"pid"`
	Status string `json:"status"`
}

// State runs `runsc state`.
func (r *Runsc) State(ctx context.Context, id string, o StateOpts) (*State, error) {
	out, err := r.do(ctx, "state "+id, o.args(id), nil)
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(out, &s); err != nil {
		return nil, fmt.Errorf("runsc state %s: parse: %w", id, err)
	}
	return &s, nil
}

// Pause runs `runsc pause`.
func (r *Runsc) Pause(ctx context.Context, id string, o PauseOpts) error {
	_, err := r.do(ctx, "pause "+id, o.args(id), nil)
	return err
}

// Resume runs `runsc resume`.
func (r *Runsc) Resume(ctx context.Context, id string, o ResumeOpts) error {
	_, err := r.do(ctx, "resume "+id, o.args(id), nil)
	return err
}

// TarRootfsUpper runs `runsc tar rootfs-upper`: the upper layer of the container's
// rootfs overlay (what its processes wrote, deleted files as overlayfs whiteouts) into a
// tar archive at o.File. The container's sandbox must run (it may be paused); a
// container whose rootfs has no overlay (runsc --overlay2=none) fails.
func (r *Runsc) TarRootfsUpper(ctx context.Context, id string, o TarRootfsUpperOpts) error {
	_, err := r.do(ctx, "tar rootfs-upper "+id, o.args(id), nil)
	return err
}

// Ps runs `runsc ps --format json` and returns the container's pids inside the sandbox.
func (r *Runsc) Ps(ctx context.Context, id string, o PsOpts) ([]int, error) {
	out, err := r.do(ctx, "ps "+id, o.args(id), nil)
	if err != nil {
		return nil, err
	}
	var pids []int
	if err := json.Unmarshal(out, &pids); err != nil {
		return nil, fmt.Errorf("runsc ps %s: parse: %w", id, err)
	}
	return pids, nil
}

// Stats runs `runsc events --stats` and returns the container's resource usage, in the
// shape go-runc decodes from runc.
func (r *Runsc) Stats(ctx context.Context, id string, o StatsOpts) (*runc.Stats, error) {
	out, err := r.do(ctx, "events --stats "+id, o.args(id), nil)
	if err != nil {
		return nil, err
	}
	var ev runc.Event
	if err := json.Unmarshal(out, &ev); err != nil {
		return nil, fmt.Errorf("runsc events --stats %s: parse: %w", id, err)
	}
	if ev.Type != "stats" || ev.Stats == nil {
		return nil, fmt.Errorf("runsc events --stats %s: got event %q without stats", id, ev.Type)
	}
	return ev.Stats, nil
}

// Update runs `runsc update --resources=-` with o.Resources as JSON on stdin.
func (r *Runsc) Update(ctx context.Context, id string, o UpdateOpts) error {
	data, err := json.Marshal(o.Resources)
	if err != nil {
		return fmt.Errorf("runsc update %s: %w", id, err)
	}
	cmd := r.command(ctx, o.args(id))
	cmd.Stdin = bytes.NewReader(data)
	_, err = r.run(cmd, "update "+id, nil)
	return err
}

// Version runs `runsc --version` (a global flag, no subcommand, so no options) and
// returns its first line, e.g. "runsc version VERSION".
func (r *Runsc) Version(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, r.Path, "--version")
	var out bytes.Buffer
	cmd.Stdout = &out
	ec, err := r.monitor().Start(cmd)
	if err != nil {
		return "", fmt.Errorf("runsc --version: %w", err)
	}
	if status, err := r.monitor().Wait(cmd, ec); err != nil || status != 0 {
		return "", fmt.Errorf("runsc --version: exit %d: %v", status, err)
	}
	line, _, _ := strings.Cut(out.String(), "\n")
	return strings.TrimSpace(line), nil
}
