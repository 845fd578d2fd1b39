package nodeinstall

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// fakeContainerd stands for containerd behind both Restarter and HandlerChecker: it
// serves the handler exactly when, at its last restart, the drop-in was in the host root,
// as the real one does once it has read its config. It does not answer for downPolls
// calls after each restart, like a containerd still starting.
type fakeContainerd struct {
	dropin    string // host-root-joined drop-in path
	downPolls int

	mu       sync.Mutex
	restarts int
	served   bool
	down     int // calls left that fail
	calls    int
}

func (c *fakeContainerd) Restart(_ context.Context, _ string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.restarts++
	_, err := os.Stat(c.dropin)
	c.served = err == nil
	c.down = c.downPolls
	return true, nil
}

func (c *fakeContainerd) Serves(_ context.Context, handler string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if handler != "podsnapshot" {
		return false, errors.New("asked for handler " + handler)
	}
	if c.down > 0 {
		c.down--
		return false, errors.New("dial unix containerd.sock: connection refused")
	}
	return c.served, nil
}

func (c *fakeContainerd) restartCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.restarts
}

// lateChecker fails, then answers "not served", then serves from call readyAt on: a
// containerd an operator restarts while the installer waits.
type lateChecker struct {
	readyAt int
	calls   int
}

func (l *lateChecker) Serves(context.Context, string) (bool, error) {
	l.calls++
	switch {
	case l.calls == 1:
		return false, errors.New("connection refused")
	case l.calls < l.readyAt:
		return false, nil
	}
	return true, nil
}

// fakeLabeler keeps node labels in a map.
type fakeLabeler struct {
	labels  map[string]map[string]string
	sets    int
	removes int
}

func (f *fakeLabeler) SetLabel(_ context.Context, node, key, value string) error {
	f.sets++
	if f.labels == nil {
		f.labels = map[string]map[string]string{}
	}
	if f.labels[node] == nil {
		f.labels[node] = map[string]string{}
	}
	f.labels[node][key] = value
	return nil
}

func (f *fakeLabeler) RemoveLabel(_ context.Context, node, key string) error {
	f.removes++
	delete(f.labels[node], key)
	return nil
}

// fakeProcs returns a fixed list of shims.
type fakeProcs []Shim

func (p fakeProcs) Shims() ([]Shim, error) { return p, nil }

// logBuffer collects log output for assertions; safe for concurrent writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testHost is a host root in a temp dir, an image's source dir with the three binaries,
// and the fakes, wired into Options with the default host paths.
type testHost struct {
	root, src string
	ctrd      *fakeContainerd
	labels    *fakeLabeler
	log       *logBuffer
	opts      Options
}

func newTestHost(t *testing.T) *testHost {
	t.Helper()
	h := &testHost{root: t.TempDir(), src: t.TempDir(), labels: &fakeLabeler{}, log: &logBuffer{}}
	for _, name := range Binaries {
		writeFile(t, filepath.Join(h.src, name), "#!binary "+name+" v1\n", 0o755)
	}
	h.ctrd = &fakeContainerd{dropin: filepath.Join(h.root, "/etc/containerd/conf.d", DropinName)}
	log := logrus.New()
	log.SetOutput(h.log)
	h.opts = Options{
		HostRoot:         h.root,
		SourceDir:        h.src,
		BinDir:           "/usr/local/bin",
		ContainerdConfig: "/etc/containerd/config.toml",
		DropinDir:        "/etc/containerd/conf.d",
		ShimConfig:       "/etc/containerd/podsnapshot.toml",
		NodeName:         "node-1",
		NodeLabel:        "podsnapshot.gke.io/ready",
		WaitTimeout:      10 * time.Second,
		PollInterval:     time.Millisecond,
		Restarter:        h.ctrd,
		Checker:          h.ctrd,
		Labeler:          h.labels,
		Processes:        fakeProcs(nil),
		Log:              log,
	}
	return h
}

// path returns where the host path p is in the test's host root.
func (h *testHost) path(p string) string { return filepath.Join(h.root, p) }

// label returns the node's install label and whether it is set.
func (h *testHost) label() (string, bool) {
	v, ok := h.labels.labels["node-1"]["podsnapshot.gke.io/ready"]
	return v, ok
}

func writeFile(t *testing.T, path, content string, perm fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// fileInfo is what a tree listing records of one regular file.
type fileInfo struct {
	content string
	mode    fs.FileMode
	inode   uint64
	mtime   time.Time
}

// listFiles returns every regular file and symlink under root by its path relative to
// root. Directories are left out: an empty directory Install created stays after
// Uninstall (see the package doc).
func listFiles(t *testing.T, root string) map[string]fileInfo {
	t.Helper()
	files := map[string]fileInfo{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		data, _ := os.ReadFile(path)
		files[rel] = fileInfo{content: string(data), mode: info.Mode(), inode: info.Sys().(*syscall.Stat_t).Ino, mtime: info.ModTime()}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
