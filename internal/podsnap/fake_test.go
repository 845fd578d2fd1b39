package podsnap

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/internal/config"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
	"github.com/podsnapshot/podsnapshot/storage"
	_ "github.com/podsnapshot/podsnapshot/storage/local" // file:// stores
)

// fakeTask is a Task whose runsc is a record of calls. A restore "loads" the image by
// checking that checkpoint.img is in the image dir; a checkpoint writes an image.
type fakeTask struct {
	id string

	mu         sync.Mutex // guards everything below
	calls      []string
	annots     map[string]string // annotations of the last WriteSpec
	created    bool              // in runsc
	started    int               // Started calls
	watched    int               // Watch calls
	exitStatus int
	exited     bool
	done       chan struct{} // closed at exit
	// failures by method name ("create", "start", "restore", "destroy", "checkpoint").
	fail map[string]error
	// checkpoints feeds WaitCheckpoint: each value is its result, written after the
	// image (when nil) is saved into the trigger's checkpoint path.
	checkpoints chan error
	// restoredFrom is the image dir of the last restore.
	restoredFrom string
	// imageSize is the size of the pages a checkpoint saves; 0 means 1 MiB.
	imageSize int
}

// pagesSize is the size of the pages a checkpoint of f saves.
func (f *fakeTask) pagesSize() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.imageSize > 0 {
		return f.imageSize
	}
	return 1 << 20
}

func newFakeTask(id string) *fakeTask {
	return &fakeTask{id: id, done: make(chan struct{}), fail: map[string]error{}, checkpoints: make(chan error, 4), created: true}
}

func (f *fakeTask) ID() string { return f.id }

func (f *fakeTask) record(call string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	name, _, _ := strings.Cut(call, " ")
	return f.fail[name]
}

func (f *fakeTask) Create(ctx context.Context) error {
	if err := f.record("create"); err != nil {
		return err
	}
	f.mu.Lock()
	f.created = true
	f.mu.Unlock()
	return nil
}

func (f *fakeTask) Launch(ctx context.Context, img *RestoreImage) error {
	if img == nil {
		return f.record("start")
	}
	imageDir := img.Dir
	call := "restore"
	if img.Direct {
		call = "restore --direct"
	}
	if err := f.record(call); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(imageDir, "checkpoint.img")); err != nil {
		return fmt.Errorf("fake restore: %w", err)
	}
	f.mu.Lock()
	f.restoredFrom = imageDir
	f.mu.Unlock()
	return nil
}

func (f *fakeTask) Destroy(ctx context.Context) error {
	if err := f.record("destroy"); err != nil {
		return err
	}
	f.mu.Lock()
	f.created = false
	f.mu.Unlock()
	return nil
}

func (f *fakeTask) Kill(ctx context.Context, signal int) error {
	return f.record(fmt.Sprintf("kill %d", signal))
}

func (f *fakeTask) WriteSpec(add map[string]string) error {
	if err := f.record("writespec"); err != nil {
		return err
	}
	f.mu.Lock()
	f.annots = maps.Clone(add)
	f.mu.Unlock()
	return nil
}

func (f *fakeTask) Started() {
	f.mu.Lock()
	f.started++
	f.mu.Unlock()
}

func (f *fakeTask) Watch() {
	f.mu.Lock()
	f.watched++
	f.mu.Unlock()
}

func (f *fakeTask) Exit(status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.exited {
		return
	}
	f.exited, f.exitStatus = true, status
	close(f.done)
}

func (f *fakeTask) Exited() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.exited
}

func (f *fakeTask) WatchCheckpoint(ctx context.Context) <-chan error {
	f.record("watch")
	ch := make(chan error, 1)
	go func() {
		select {
		case err := <-f.checkpoints:
			if err == nil {
				f.mu.Lock()
				dir := f.annots[annCheckpointPath]
				f.mu.Unlock()
				writeImage(dir, f.pagesSize())
			}
			ch <- err
		case <-f.done:
			ch <- errors.New("fake: sandbox gone")
		case <-ctx.Done():
			ch <- ctx.Err()
		}
	}()
	return ch
}

func (f *fakeTask) Checkpoint(ctx context.Context, dir string, leaveRunning bool) error {
	if err := f.record(fmt.Sprintf("checkpoint leaveRunning=%v", leaveRunning)); err != nil {
		return err
	}
	writeImage(dir, f.pagesSize())
	return nil
}

// TarRootfs writes a layer holding one file, "layer of <id>".
func (f *fakeTask) TarRootfs(ctx context.Context, file string) error {
	if err := f.record("tar"); err != nil {
		return err
	}
	return os.WriteFile(file, []byte("layer of "+f.id), 0o600)
}

func (f *fakeTask) Freeze(ctx context.Context) error { return f.record("freeze") }
func (f *fakeTask) Thaw(ctx context.Context) error   { return f.record("thaw") }

// callLog returns the calls so far, joined by ", ".
func (f *fakeTask) callLog() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, ", ")
}

func (f *fakeTask) state() (started, watched int, exited bool, status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.started, f.watched, f.exited, f.exitStatus
}

// writeImage writes a checkpoint image of about size bytes into dir.
func writeImage(dir string, size int) {
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, "checkpoint.img"), []byte(strings.Repeat("kernel state ", 100)), 0o600)
	os.WriteFile(filepath.Join(dir, "pages_meta.img"), []byte("meta"), 0o600)
	pages := make([]byte, size)
	for i := range pages {
		pages[i] = byte(i * 7)
	}
	os.WriteFile(filepath.Join(dir, "pages.img"), pages, 0o600)
}

// env is a node with one policy directory and a local store in temp dirs.
type env struct {
	t        *testing.T
	node     *Node
	cfg      config.Config
	store    string // the local store's directory
	labels   map[string]string
	images   map[string]string // container ID -> image reference
	tuple    compat.Tuple
	lookups  int
	lookupMu sync.Mutex
}

const testPolicy = `apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotStorageConfig
metadata:
  name: local-store
spec:
  snapshotStorageConfig:
    local:
      path: %s
---
apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotPolicy
metadata:
  name: my-app
  namespace: default
spec:
  storageConfigName: local-store
  selector:
    matchLabels:
      app: my-app
  triggerConfig:
    type: %s
    postCheckpoint: %s
`

// newEnv makes a node whose policy my-app (namespace default, label app=my-app) has the
// given trigger type and postCheckpoint.
func newEnv(t *testing.T, trigger, post string) *env {
	t.Helper()
	root := t.TempDir()
	e := &env{
		t:      t,
		store:  filepath.Join(root, "store"),
		labels: map[string]string{"app": "my-app"},
		images: map[string]string{},
		tuple:  compat.New("runsc-test", map[string]string{"platform": "systrap"}, "amd64", []string{"sse"}, nil),
	}
	policyDir := filepath.Join(root, "policies")
	must(t, os.MkdirAll(policyDir, 0o700))
	must(t, os.WriteFile(filepath.Join(policyDir, "p.yaml"), fmt.Appendf(nil, testPolicy, e.store, trigger, post), 0o600))
	e.cfg = config.Default()
	e.cfg.WorkDir = filepath.Join(root, "work")
	e.cfg.PolicyDir = policyDir
	e.cfg.RestoreWaitSeconds = 5
	// The fake Task never reads the image: restores here take the whole-download path
	// (the streaming one is tested in checkpoint/stream and the e2e tests).
	e.cfg.StreamRestore = false
	e.node = &Node{
		Namespace: "k8s.io",
		Hostname:  "node-1",
		Lookup: func(ctx context.Context, id string) (Record, error) {
			e.lookupMu.Lock()
			defer e.lookupMu.Unlock()
			e.lookups++
			img := e.images[id]
			if img == "" {
				img = "docker.io/library/app:1"
			}
			return Record{Labels: maps.Clone(e.labels), Image: img, ImageDigest: "sha256:" + strings.Repeat("a", 64)}, nil
		},
		Tuple: func(ctx context.Context, cfg config.Config) (compat.Tuple, error) { return e.tuple, nil },
	}
	return e
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// sandboxSpec is the spec of a CRI pod's pause container, with its pod name.
func sandboxSpec(pod string) *specs.Spec {
	return &specs.Spec{
		Process: &specs.Process{Args: []string{"/pause"}, Cwd: "/"},
		Root:    &specs.Root{Path: "rootfs"},
		Annotations: map[string]string{
			oci.SandboxNamespaceAnnotation:     "default",
			oci.SandboxNameAnnotation:          pod,
			oci.SandboxUIDAnnotation:           "uid-" + pod,
			"io.kubernetes.cri.container-type": "sandbox",
		},
	}
}

// containerSpec is the spec of a CRI container named name in the sandbox.
func containerSpec(name string, args ...string) *specs.Spec {
	return &specs.Spec{
		Process: &specs.Process{Args: args, Cwd: "/"},
		Root:    &specs.Root{Path: "rootfs"},
		Annotations: map[string]string{
			oci.ContainerNameAnnotation:        name,
			"io.kubernetes.cri.container-type": "container",
		},
	}
}

// plan plans a sandbox task named id of pod.
func (e *env) plan(id, pod string) (*Pod, *fakeTask) {
	sb := newFakeTask(id)
	p := e.node.Plan(context.Background(), Sandbox{Task: sb, Spec: sandboxSpec(pod), Config: e.cfg})
	if p != nil {
		// The access-time update of a restore and the end of a commit (its report,
		// retention) run in the background; the temp dirs go once they are over.
		e.t.Cleanup(p.touches.Wait)
		e.t.Cleanup(p.commits.Wait)
	}
	return p, sb
}

// repo opens the env's store as the lifecycle does.
func (e *env) repo() *repo.Repo {
	st, err := storage.Open(context.Background(), "file://"+e.store)
	must(e.t, err)
	return &repo.Repo{Store: st}
}

// committed lists the committed snapshots in namespace default.
func (e *env) committed() []*manifest.Manifest {
	ms, _, err := e.repo().List(context.Background(), "default")
	must(e.t, err)
	var out []*manifest.Manifest
	for _, m := range ms {
		if m.State == manifest.StateCommitted {
			out = append(out, m)
		}
	}
	return out
}

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
