package harness

import (
	"os"
	"strings"
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
