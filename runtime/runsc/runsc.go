// Package runsc wraps gVisor's runsc command line: one method per runsc command, each
// taking that command's options struct (opts.go), whose args method builds the argument
// vector in one place. Children run through a process monitor (so a subreaping shim reaps
// every child exactly once), and a failed command's error carries the last error runsc
// wrote to its log.
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

// argv is the full argument vector (without the binary) of a command whose own
// arguments, from an options struct's args, are sub.
func (r *Runsc) argv(sub []string) []string {
	return append(r.globalArgs(), sub...)
}

// command prepares runsc with the global flags and sub, the vector an options struct's
// args built.
func (r *Runsc) command(ctx context.Context, sub []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, r.Path, r.argv(sub)...)
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
// started, when set, gets the child's pid once it runs.
func (r *Runsc) run(cmd *exec.Cmd, name string, started func(pid int)) ([]byte, error) {
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
	if started != nil {
		started(cmd.Process.Pid)
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
