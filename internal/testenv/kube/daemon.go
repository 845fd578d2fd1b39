package kube

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/hostproc"
)

// daemon is one of the cluster's long-running processes.
type daemon struct {
	*hostproc.Daemon
	name    string
	logPath string
}

// start runs BinDir/name with args on the host as a daemon (startCmd), logged to
// LogDir/NAME.log and recorded under name.
func (c *Cluster) start(name string, args ...string) (*daemon, error) {
	cmd := exec.Command(filepath.Join(c.bin, name), args...)
	cmd.Dir = c.Dir
	return c.startCmd(name, name, cmd)
}

// startCmd runs cmd as a daemon of its own process group that dies with this process
// (hostproc.StartDaemon), its stdout and stderr appended to LogDir/LOGNAME.log
// (appended: a restarted API server or containerd keeps its earlier log), and records it
// under name.
func (c *Cluster) startCmd(name, logName string, cmd *exec.Cmd) (*daemon, error) {
	logPath := filepath.Join(c.LogDir, logName+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	defer logFile.Close() // the child has its own copy
	fmt.Fprintf(logFile, "=== %s: %s %s\n", time.Now().Format(time.RFC3339Nano), name, strings.Join(cmd.Args[1:], " "))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	hd, err := hostproc.StartDaemon(cmd)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{Daemon: hd, name: name, logPath: logPath}
	c.mu.Lock()
	c.daemons[name] = d
	c.mu.Unlock()
	c.logf("kube: started %s (pid %d)", name, cmd.Process.Pid)
	return d, nil
}

// pollInterval is how often readiness checks run.
const pollInterval = 250 * time.Millisecond

// waitFor polls check until it returns nil. It fails when d exits or after
// StartTimeout, with check's last error and d's log tail.
func (c *Cluster) waitFor(d *daemon, what string, check func() error) error {
	start := time.Now()
	deadline := start.Add(c.opts.StartTimeout)
	for {
		err := check()
		if err == nil {
			c.logf("kube: %s after %.1fs", what, time.Since(start).Seconds())
			return nil
		}
		if d.Exited() {
			return fmt.Errorf("%s exited (%v) while waiting for %s (last check: %v); %s",
				d.name, d.Cmd.ProcessState, what, err, d.tail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no %s after %v (last check: %v); %s", d.name, what, c.opts.StartTimeout, err, d.tail())
		}
		time.Sleep(pollInterval)
	}
}

// tailBytes bounds the log tail an error carries: enough for the reason a daemon gave
// up (the kubelet logs one long line per failed step), little enough for a test log.
const tailBytes = 6 << 10

// tail returns the end of the daemon's log, headed by its path.
func (d *daemon) tail() string { return LogTail(d.logPath, tailBytes) }

// LogTail returns at most the last max bytes of the log file at path, from a line start,
// headed by its path; a log that cannot be read says why.
func LogTail(path string, max int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return fmt.Sprintf("log %s ends:\n%s", path, b)
}

// Logs returns the tail (at most max bytes) of each daemon's log, for a failed test's
// report: etcd, kube-apiserver, kube-controller-manager, kubelet, in that order, then
// the scheduler's and the nodes' (NODE-containerd, NODE-kubelet, NODE-kube-proxy).
func (c *Cluster) Logs(max int) string {
	var b strings.Builder
	names := append([]string(nil), Binaries[:4]...)
	names = append(names, "kube-scheduler")
	for _, n := range c.Nodes {
		names = append(names, n.Name+"-holder", n.Name+"-containerd", n.Name+"-kubelet", n.Name+"-kube-proxy")
	}
	for _, name := range names {
		p := filepath.Join(c.LogDir, name+".log")
		if _, err := os.Stat(p); err == nil {
			b.WriteString(LogTail(p, max) + "\n")
		}
	}
	return b.String()
}
