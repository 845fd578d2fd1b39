// Package runsc wraps gVisor's runsc command line: one method per runsc command, each
// building its arguments in one place, running the child through a process monitor (so a
// subreaping shim reaps every child exactly once), and surfacing the last error runsc wrote
// to its log in the returned error.
package runsc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Runsc runs one runsc binary against one state root. The zero value is not usable:
// Path and Root must be set.
type Runsc struct {
	// Path is the runsc binary, a path or a name looked up in $PATH.
	Path string
	// Root is runsc's state directory (--root).
	Root string
	// LogPath is the file runsc appends its log to (--log, JSON format). Errors from a
	// failed command are taken from here. Empty: no log file; errors come from stderr.
	LogPath string
	// Flags are extra global runsc flags, name without dashes to value, e.g.
	// {"platform": "systrap", "network": "sandbox"}. They are passed sorted by name.
	Flags map[string]string
	// Monitor starts and waits for children. The shim passes containerd's reaper so that
	// its SIGCHLD loop and exec.Cmd.Wait do not race; nil uses go-runc's plain monitor.
	Monitor runc.ProcessMonitor
}

// globalArgs are the flags that precede every runsc subcommand.
func (r *Runsc) globalArgs() []string {
	args := []string{"--root=" + r.Root}
	if r.LogPath != "" {
		args = append(args, "--log="+r.LogPath, "--log-format=json")
	}
	names := make([]string, 0, len(r.Flags))
	for k := range r.Flags {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		args = append(args, fmt.Sprintf("--%s=%s", k, r.Flags[k]))
	}
	return args
}

// Args returns the full argument vector (without the binary) for a subcommand; exported
// for tests and for logging what was run.
func (r *Runsc) Args(sub ...string) []string {
	return append(r.globalArgs(), sub...)
}

func (r *Runsc) command(ctx context.Context, sub ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, r.Path, r.Args(sub...)...)
	// runsc must not get the shim's signals meant for containerd's process group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A cancelled context kills the child; the monitor still reaps it.
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	return cmd
}

func (r *Runsc) monitor() runc.ProcessMonitor {
	if r.Monitor != nil {
		return r.Monitor
	}
	return runc.Monitor
}

// run starts cmd, waits for it through the monitor and, when it fails, returns an error
// naming the subcommand and the last error runsc logged. If cmd has no Stdout or Stderr
// of its own, they are captured: stdout is returned, stderr feeds the error message.
func (r *Runsc) run(cmd *exec.Cmd, name string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	if cmd.Stdout == nil {
		cmd.Stdout = &stdout
	}
	if cmd.Stderr == nil {
		cmd.Stderr = &stderr
	}
	logOffset := fileSize(r.LogPath)
	ec, err := r.monitor().Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("runsc %s: start %s: %w", name, r.Path, err)
	}
	status, err := r.monitor().Wait(cmd, ec)
	if err == nil && status != 0 {
		err = &ExitError{Status: status}
	}
	if err != nil {
		msg := LastLogError(readFrom(r.LogPath, logOffset))
		if msg == "" {
			msg = LastLogError(stderr.Bytes())
		}
		if msg == "" {
			msg = strings.TrimSpace(stderr.String())
		}
		if msg == "" {
			// The command's stderr may have gone to the container's stdio; a bad global
			// flag is the usual silent failure, so ask runsc about its flags alone.
			msg = r.flagError()
		}
		if msg != "" {
			return stdout.Bytes(), fmt.Errorf("runsc %s: %s: %w", name, msg, err)
		}
		return stdout.Bytes(), fmt.Errorf("runsc %s: %w", name, err)
	}
	return stdout.Bytes(), nil
}

// flagError runs `runsc <global flags> --version` and returns what runsc said if that
// fails too (e.g. "flag provided but not defined: -x"); "" otherwise.
func (r *Runsc) flagError() string {
	cmd := exec.Command(r.Path, append(r.globalArgs(), "--version")...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	ec, err := r.monitor().Start(cmd)
	if err != nil {
		return ""
	}
	if status, err := r.monitor().Wait(cmd, ec); err == nil && status == 0 {
		return ""
	}
	line, _, _ := strings.Cut(strings.TrimSpace(out.String()), "\n")
	return line
}

// ExitError is a runsc command that exited with a non-zero status.
type ExitError struct{ Status int }

func (e *ExitError) Error() string { return "exit status " + strconv.Itoa(e.Status) }

// IO is what a command's stdio is connected to; go-runc's pipe, null and console IO
// implementations satisfy it.
type IO interface {
	Set(*exec.Cmd)
}

// CreateOpts are the options of `runsc create`.
type CreateOpts struct {
	// IO is attached to the created sandbox (for a sandbox container the sandbox process
	// keeps these descriptors as the container's stdio). Nil: /dev/null.
	IO IO
	// PidFile receives the sandbox (or gofer-side) pid.
	PidFile string
	// ConsoleSocket is the path of a unix socket that receives the pty master.
	ConsoleSocket string
	// UserLog is where the sandbox writes user-visible logs (sandbox containers only).
	UserLog string
}

// Create runs `runsc create`.
func (r *Runsc) Create(ctx context.Context, id, bundle string, o CreateOpts) error {
	args := []string{"create", "--bundle", bundle}
	if o.PidFile != "" {
		args = append(args, "--pid-file", o.PidFile)
	}
	if o.ConsoleSocket != "" {
		args = append(args, "--console-socket", o.ConsoleSocket)
	}
	if o.UserLog != "" {
		args = append(args, "--user-log", o.UserLog)
	}
	cmd := r.command(ctx, append(args, id)...)
	if o.IO != nil {
		o.IO.Set(cmd)
	}
	_, err := r.run(cmd, "create "+id)
	return err
}

// Start runs `runsc start`. io is attached for subcontainers (whose stdio is donated at
// start); pass nil for a sandbox container, whose stdio was given at create.
func (r *Runsc) Start(ctx context.Context, id string, io IO) error {
	cmd := r.command(ctx, "start", id)
	if io != nil {
		io.Set(cmd)
	}
	_, err := r.run(cmd, "start "+id)
	return err
}

// RestoreOpts are the options of `runsc restore`.
type RestoreOpts struct {
	// ImagePath is the directory holding checkpoint.img and, if present, pages files.
	ImagePath string
	// Direct reads the image files with O_DIRECT.
	Direct bool
	// Background restores application pages in the background after the sandbox resumes.
	Background bool
	// IO as for Start.
	IO IO
}

// RestoreArgs returns the subcommand arguments of `runsc restore`; exported for tests.
func RestoreArgs(id string, o RestoreOpts) []string {
	args := []string{"restore", "--image-path=" + o.ImagePath, "--detach"}
	if o.Direct {
		args = append(args, "--direct")
	}
	if o.Background {
		args = append(args, "--background")
	}
	return append(args, id)
}

// Restore runs `runsc restore --detach` for a created container: it is the start of a
// restored container.
func (r *Runsc) Restore(ctx context.Context, id string, o RestoreOpts) error {
	cmd := r.command(ctx, RestoreArgs(id, o)...)
	if o.IO != nil {
		o.IO.Set(cmd)
	}
	_, err := r.run(cmd, "restore "+id)
	return err
}

// CheckpointOpts are the options of `runsc checkpoint`.
type CheckpointOpts struct {
	ImagePath    string
	LeaveRunning bool
	// Compression is runsc's own image compression: "none" or "flate-best-speed".
	Compression string
}

// Checkpoint runs `runsc checkpoint`.
func (r *Runsc) Checkpoint(ctx context.Context, id string, o CheckpointOpts) error {
	args := []string{"checkpoint", "--image-path=" + o.ImagePath}
	if o.LeaveRunning {
		args = append(args, "--leave-running")
	}
	if o.Compression != "" {
		args = append(args, "--compression="+o.Compression)
	}
	_, err := r.run(r.command(ctx, append(args, id)...), "checkpoint "+id)
	return err
}

// WaitResult is the JSON `runsc wait` prints.
type WaitResult struct {
	ID         string `json:"id"`
	ExitStatus int    `json:"exitStatus"`
}

// Wait runs `runsc wait` and returns the container's exit status (a wait status as
// runsc reports it: the exit code, or 128+signal).
func (r *Runsc) Wait(ctx context.Context, id string) (int, error) {
	out, err := r.run(r.command(ctx, "wait", id), "wait "+id)
	if err != nil {
		return -1, err
	}
	var res WaitResult
	if err := json.Unmarshal(out, &res); err != nil {
		return -1, fmt.Errorf("runsc wait %s: parse %q: %w", id, out, err)
	}
	return res.ExitStatus, nil
}

// WaitCheckpoint runs `runsc wait --checkpoint`: it returns once the sandbox has
// completed a checkpoint (one requested by the workload or by `runsc checkpoint`).
func (r *Runsc) WaitCheckpoint(ctx context.Context, id string) error {
	_, err := r.run(r.command(ctx, "wait", "--checkpoint", id), "wait --checkpoint "+id)
	return err
}

// WaitRestore runs `runsc wait --restore`: it returns once a restore has completed.
func (r *Runsc) WaitRestore(ctx context.Context, id string) error {
	_, err := r.run(r.command(ctx, "wait", "--restore", id), "wait --restore "+id)
	return err
}

// ExecOpts are the options of `runsc exec`.
type ExecOpts struct {
	IO IO
	// PidFile receives the pid of the detached `runsc exec` process that lives as long
	// as the exec'd process and exits with its status.
	PidFile string
	// InternalPidFile receives the process's pid inside the sandbox (for kill --pid).
	InternalPidFile string
	ConsoleSocket   string
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
	args := []string{"exec", "--detach", "--process", f.Name()}
	if o.PidFile != "" {
		args = append(args, "--pid-file", o.PidFile)
	}
	if o.InternalPidFile != "" {
		args = append(args, "--internal-pid-file", o.InternalPidFile)
	}
	if o.ConsoleSocket != "" {
		args = append(args, "--console-socket", o.ConsoleSocket)
	}
	cmd := r.command(ctx, append(args, id)...)
	if o.IO != nil {
		o.IO.Set(cmd)
	}
	_, err = r.run(cmd, "exec "+id)
	return err
}

// KillArgs returns the subcommand arguments of `runsc kill`; exported for tests.
func KillArgs(id string, signal int, all bool, pid int) []string {
	args := []string{"kill"}
	if all {
		args = append(args, "--all")
	}
	if pid != 0 {
		args = append(args, "--pid", strconv.Itoa(pid))
	}
	return append(args, id, strconv.Itoa(signal))
}

// Kill runs `runsc kill`: signal the container's init (pid 0), a process by its
// sandbox pid, or all its processes.
func (r *Runsc) Kill(ctx context.Context, id string, signal int, all bool, pid int) error {
	_, err := r.run(r.command(ctx, KillArgs(id, signal, all, pid)...), "kill "+id)
	return err
}

// Delete runs `runsc delete`; force also kills a running container.
func (r *Runsc) Delete(ctx context.Context, id string, force bool) error {
	args := []string{"delete"}
	if force {
		args = append(args, "--force")
	}
	_, err := r.run(r.command(ctx, append(args, id)...), "delete "+id)
	return err
}

// State is the subset of `runsc state` output the shim uses (the OCI state).
type State struct {
	ID     string `json:"id"`
	Pid    int    `json:"pid"`
	Status string `json:"status"`
}

// State runs `runsc state`.
func (r *Runsc) State(ctx context.Context, id string) (*State, error) {
	out, err := r.run(r.command(ctx, "state", id), "state "+id)
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
func (r *Runsc) Pause(ctx context.Context, id string) error {
	_, err := r.run(r.command(ctx, "pause", id), "pause "+id)
	return err
}

// Resume runs `runsc resume`.
func (r *Runsc) Resume(ctx context.Context, id string) error {
	_, err := r.run(r.command(ctx, "resume", id), "resume "+id)
	return err
}

// Ps runs `runsc ps --format json` and returns the container's pids inside the sandbox.
func (r *Runsc) Ps(ctx context.Context, id string) ([]int, error) {
	out, err := r.run(r.command(ctx, "ps", "--format", "json", id), "ps "+id)
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
func (r *Runsc) Stats(ctx context.Context, id string) (*runc.Stats, error) {
	out, err := r.run(r.command(ctx, "events", "--stats", id), "events --stats "+id)
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

// Update runs `runsc update --resources=-` with resources as JSON on stdin.
func (r *Runsc) Update(ctx context.Context, id string, resources *specs.LinuxResources) error {
	data, err := json.Marshal(resources)
	if err != nil {
		return fmt.Errorf("runsc update %s: %w", id, err)
	}
	cmd := r.command(ctx, "update", "--resources=-", id)
	cmd.Stdin = bytes.NewReader(data)
	_, err = r.run(cmd, "update "+id)
	return err
}

// Version runs `runsc --version` and returns its first line, e.g.
// "runsc version VERSION".
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

// LastLogError returns the message of the last error in a runsc log: runsc's JSON log
// lines ({"msg":..., "level":"warning"|"error"|...}) whose level is error or fatal or
// whose message starts with "FATAL ERROR:", or plain-text lines of that kind. Empty when
// none is found.
func LastLogError(log []byte) string {
	var last string
	for _, line := range bytes.Split(log, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		var entry struct {
			Msg   string `json:"msg"`
			Level string `json:"level"`
		}
		if line[0] == '{' && json.Unmarshal(line, &entry) == nil {
			msg := strings.TrimSpace(entry.Msg)
			if entry.Level == "error" || entry.Level == "fatal" || strings.Contains(msg, "FATAL ERROR:") {
				last = trimFatal(msg)
			}
			continue
		}
		s := string(line)
		if strings.Contains(s, "FATAL ERROR:") || strings.HasPrefix(s, "Error:") || strings.HasPrefix(s, "error:") {
			last = trimFatal(s)
		}
	}
	return last
}

// trimFatal strips runsc's glog-style prefix and "FATAL ERROR:" from a message.
func trimFatal(s string) string {
	if _, after, ok := strings.Cut(s, "FATAL ERROR:"); ok {
		s = after
	}
	return strings.TrimSpace(s)
}

func fileSize(path string) int64 {
	if path == "" {
		return 0
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom returns the bytes of path from offset on (at most 64 KiB, the tail).
func readFrom(path string, offset int64) []byte {
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	const max = 64 << 10
	if fi, err := f.Stat(); err == nil && fi.Size()-offset > max {
		offset = fi.Size() - max
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil
	}
	data, _ := io.ReadAll(io.LimitReader(f, max))
	return data
}

// IsNotExist reports whether err says the container does not exist in runsc's root.
func IsNotExist(err error) bool {
	if err == nil {
		return false
	}
	var ee *ExitError
	msg := err.Error()
	return errors.As(err, &ee) && (strings.Contains(msg, "does not exist") || strings.Contains(msg, "not found")) ||
		errors.Is(err, os.ErrNotExist)
}

// DefaultRoot returns the runsc state root for a containerd namespace under base.
func DefaultRoot(base, namespace string) string {
	return filepath.Join(base, namespace)
}
