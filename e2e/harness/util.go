package harness

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Eventually polls cond every 100ms until it returns true, or fails the test after
// timeout with msg.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("harness: after %v: %s", timeout, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// LogFile returns a fresh file path and its "file://" URI, for `ctr run -d --log-uri URI`:
// a detached task's stdout and stderr then land in the file, which WaitForOutput reads.
func LogFile(t testing.TB, name string) (path, uri string) {
	t.Helper()
	path = t.TempDir() + "/" + name + ".log"
	return path, "file://" + path
}

// WaitForOutput waits until the file at path contains want and returns its content; it
// fails the test with the content so far after timeout.
func WaitForOutput(t testing.TB, path, want string, timeout time.Duration) string {
	t.Helper()
	var s string
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		s = string(b)
		if strings.Contains(s, want) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("harness: %q not in %s after %v; it holds:\n%s", want, path, timeout, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startOwned starts cmd in its own process group with SIGKILL as its parent-death
// signal, so a test binary that dies without running its cleanups (a go test timeout
// panics and exits) takes its containerd or fake-gcs-server with it. The kernel sends
// that signal when the *thread* that forked the child exits, so the child is started and
// waited for on one goroutine locked to its thread; done is closed once it is reaped.
func startOwned(cmd *exec.Cmd, done chan<- struct{}) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine, after the child is reaped.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(done)
	}()
	return <-started
}
