package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/testenv/hostproc"
	"github.com/podsnapshot/podsnapshot/storage"
	_ "github.com/podsnapshot/podsnapshot/storage/gcs"
	_ "github.com/podsnapshot/podsnapshot/storage/local"
)

func TestMain(m *testing.M) { harness.Main(m) }

// runtime is the containerd runtime type under test.
const runtime = harness.RuntimeType

// env is one test's world: a private containerd with our shim, the test images, a shim
// config, a policy directory and a snapshot store (a local directory or a bucket on
// fake-gcs-server). A CRI env (newCRIEnv) also has a CNI network, and its containerd
// serves CRI in namespace k8s.io.
type env struct {
	t         *testing.T
	cd        *harness.Containerd
	net       *harness.CNINetwork // CRI only
	dir       string
	config    string // shim config (ConfigPath)
	policyDir string
	workDir   string
	runscRoot string
	// kubeletPodsDir stands in for /var/lib/kubelet/pods (emptyDir volumes of CRI pods).
	kubeletPodsDir string
	storeURL       string // "" without a store
	gcs            *harness.FakeGCS
	gate           *harness.GCSGate  // the shim's way to gcs, with envOptions.gate
	localGate      *harness.GatedDir // the shim's local store, with envOptions.gate
	envVars        []string          // extra environment for the CLI (STORAGE_EMULATOR_HOST)
	store          storage.Store
	repo           *repo.Repo
	imageCache     map[string]harness.Image
}

type storeKind string

const (
	noStore    storeKind = ""
	localStore storeKind = "local"
	gcsStore   storeKind = "gcs"
)

// policies are the test policies, one per trigger mode and scope, each selecting the
// pods labelled app=<its name>.
var policies = strings.Join([]string{
	testPolicy("my-app", "workload", "resume", ""),
	testPolicy("stopper", "workload", "stop", ""),
	testPolicy("rootfs", "workload", "resume", "rootfs-only"),
	testPolicy("rootfs-manual", "manual", "stop", "rootfs-only"),
	testPolicy("manual", "manual", "", ""),
}, "---\n")

// testPolicy is the YAML of policy name in namespace test over storage config "store",
// selecting app=<name>; post and scope are left out when empty (their defaults).
func testPolicy(name, trigger, post, scope string) string {
	y := fmt.Sprintf(`apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotPolicy
metadata:
  name: %s
  namespace: test
spec:
  storageConfigName: store
  selector:
    matchLabels:
      app: %s
`, name, name)
	if scope != "" {
		y += "  snapshotScope: " + scope + "\n"
	}
	y += "  triggerConfig:\n    type: " + trigger + "\n"
	if post != "" {
		y += "    postCheckpoint: " + post + "\n"
	}
	return y
}

func newEnv(t *testing.T, kind storeKind) *env {
	t.Helper()
	return newEnvWith(t, kind, envOptions{})
}

// newCRIEnv is newEnv with containerd's CRI plugins on (see harness.CRIConfig): pods run
// with `crictl runp --runtime podsnapshot` under the shim with this env's config.
func newCRIEnv(t *testing.T, kind storeKind) *env {
	t.Helper()
	return newEnvWith(t, kind, envOptions{cri: true})
}

// envOptions are the variants of an env.
type envOptions struct {
	// cri: containerd serves CRI (newCRIEnv).
	cri bool
	// kubeletPodsDir is the shim's kubelet_pods_dir; "": a directory of the env's
	// (newKubeEnv passes its kubelet's).
	kubeletPodsDir string
	// gate: the shim reaches fake-gcs-server through a harness.GCSGate (env.gate), or
	// its local store through a harness.GatedDir (env.localGate), so a test can hold back
	// a range of an object.
	gate bool
}

// newEnvWith makes the env.
func newEnvWith(t *testing.T, kind storeKind, o envOptions) *env {
	t.Helper()
	harness.LeakCheck(t)
	e := &env{t: t, dir: t.TempDir(), kubeletPodsDir: o.kubeletPodsDir}
	// After containerd's cleanup (which kills a shim a failed test left behind) and
	// before t.TempDir's: a FUSE mount of a killed shim would keep the directory.
	t.Cleanup(func() {
		if err := hostproc.UnmountBelow(e.dir); err != nil {
			t.Errorf("unmount below %s: %v", e.dir, err)
		}
	})
	e.policyDir = filepath.Join(e.dir, "policies")
	e.workDir = filepath.Join(e.dir, "work")
	if e.kubeletPodsDir == "" {
		e.kubeletPodsDir = filepath.Join(e.dir, "kubelet-pods")
	}
	e.runscRoot = harness.RunscRoot(t)
	must(t, os.MkdirAll(e.policyDir, 0o755))

	var containerdEnv []string
	testStoreURL := "" // the test's own way to the store, when not the shim's
	switch kind {
	case localStore:
		e.storeURL = "file://" + filepath.Join(e.dir, "store")
		e.writePolicy("store.yaml", storageConfig("local:\n      path: "+filepath.Join(e.dir, "store")))
		if o.gate {
			e.localGate = harness.NewGatedDir(t, filepath.Join(e.dir, "store"), filepath.Join(e.dir, "store-backing"))
			testStoreURL = "file://" + e.localGate.Backing
		}
	case gcsStore:
		e.gcs = harness.StartFakeGCS(t)
		e.gcs.CreateBucket(t, "snapshots")
		e.storeURL = "gs://snapshots/pods"
		e.writePolicy("store.yaml", storageConfig("gcs:\n      bucket: snapshots\n      path: pods"))
		e.envVars = append(e.envVars, e.gcs.Env())
		if o.gate {
			e.gate = harness.NewGCSGate(t, e.gcs)
			containerdEnv = append(containerdEnv, e.gate.Env())
		} else {
			containerdEnv = append(containerdEnv, e.gcs.Env())
		}
	}
	if kind != noStore {
		e.writePolicy("policies.yaml", policies)
		if e.gcs != nil {
			t.Setenv("STORAGE_EMULATOR_HOST", e.gcs.Host)
		}
		if testStoreURL == "" {
			testStoreURL = e.storeURL
		}
		st, err := storage.Open(context.Background(), testStoreURL)
		must(t, err)
		t.Cleanup(func() { st.Close() })
		e.store, e.repo = st, &repo.Repo{Store: st}
	}
	e.config = e.writeConfig("shim.toml", e.workDir)
	opts := harness.ContainerdOptions{ShimDir: harness.BuildShim(t), Env: containerdEnv}
	if o.cri {
		// Before containerd: the network's cleanup must run after containerd's.
		e.net = harness.NewCNINetwork(t)
		opts.EnableCRI, opts.Namespace = true, harness.CRINamespace
		opts.ExtraConfig = harness.CRIConfig(t, harness.CRIOptions{ShimConfig: e.config, Network: e.net})
	}
	e.cd = harness.StartContainerd(t, opts)
	e.imageCache = e.cd.ImportImages(t)
	return e
}

func storageConfig(spec string) string {
	return `apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotStorageConfig
metadata:
  name: store
spec:
  snapshotStorageConfig:
    ` + spec + "\n"
}

func (e *env) writePolicy(name, yaml string) {
	must(e.t, os.WriteFile(filepath.Join(e.policyDir, name), []byte(yaml), 0o644))
}

// writeConfig writes a shim config using workDir and returns its path.
func (e *env) writeConfig(name, workDir string) string {
	path := filepath.Join(e.dir, name)
	// restore_wait_seconds is short so that a pod missing a container starts cold soon.
	cfg := fmt.Sprintf(`log_level = "debug"
work_dir = %q
policy_dir = %q
kubelet_pods_dir = %q
restore_wait_seconds = 5
[runsc]
path = %q
root = %q
`, workDir, e.policyDir, e.kubeletPodsDir, filepath.Join(harness.DepsBin(e.t), "runsc"), e.runscRoot)
	must(e.t, os.WriteFile(path, []byte(cfg), 0o644))
	return path
}

func (e *env) image(name string) string { return e.imageCache[name].Name }

// runArgs builds `ctr run` arguments for our runtime with the shim config.
func (e *env) runArgs(config string, flags []string, id string, cmd ...string) []string {
	args := append([]string{"run", "--runtime", runtime, "--runtime-config-path", config}, flags...)
	args = append(args, e.image(harness.WorkloadsImage), id)
	return append(args, cmd...)
}

// start runs a detached task whose output goes to a log file; it returns the file.
func (e *env) start(id string, labels []string, cmd ...string) string {
	e.t.Helper()
	return e.startWith(e.config, id, labels, cmd...)
}

func (e *env) startWith(config, id string, labels []string, cmd ...string) string {
	e.t.Helper()
	path, uri := harness.LogFile(e.t, id)
	flags := []string{"-d", "--log-uri", uri}
	for _, l := range labels {
		flags = append(flags, "--label", l)
	}
	e.cd.MustCtr(e.t, e.runArgs(config, flags, id, cmd...)...)
	return path
}

// remove kills a task, deletes it and its container, and waits until it is gone.
func (e *env) remove(id string) {
	e.t.Helper()
	e.cd.Ctr(e.t, "task", "kill", "-s", "SIGKILL", id)
	harness.Eventually(e.t, 30*time.Second, "task "+id+" stops", func() bool {
		r := e.cd.Ctr(e.t, "task", "ls")
		for _, line := range strings.Split(r.Stdout, "\n") {
			f := strings.Fields(line)
			if len(f) >= 3 && f[0] == id && f[2] != "STOPPED" {
				return false
			}
		}
		return true
	})
	e.cd.Ctr(e.t, "task", "rm", id)
	e.cd.MustCtr(e.t, "container", "rm", id)
}

// decision waits for the shim's decision line for container id and returns it.
func (e *env) decision(id string) string {
	e.t.Helper()
	var line string
	harness.Eventually(e.t, 30*time.Second, "decision line for "+id, func() bool {
		line = e.logLine(id, "decision=")
		return line != ""
	})
	return line
}

// logLine returns the last line of containerd's log (which carries the shim's log) that
// mentions container id and contains want.
func (e *env) logLine(id, want string) string {
	var found string
	for _, line := range strings.Split(e.cd.Logs(), "\n") {
		if strings.Contains(line, "id="+id+" ") && strings.Contains(line, want) && strings.Contains(line, "podsnapshot:") {
			found = line
		}
	}
	return found
}

// committed waits up to a minute for the snapshot that container id committed and
// returns it.
func (e *env) committed(id string) *manifest.Manifest {
	e.t.Helper()
	return e.committedWithin(id, 60*time.Second)
}

// committedWithin is committed with another wait.
func (e *env) committedWithin(id string, timeout time.Duration) *manifest.Manifest {
	e.t.Helper()
	var uuid string
	harness.Eventually(e.t, timeout, "snapshot of "+id+" committed", func() bool {
		line := e.logLine(id, "podsnapshot: committed")
		if i := strings.Index(line, "snapshot="); i >= 0 {
			uuid = strings.Fields(line[i+len("snapshot="):])[0]
			return true
		}
		return false
	})
	ms, _, err := e.repo.List(context.Background(), "test")
	must(e.t, err)
	for _, m := range ms {
		if m.UUID == uuid {
			return m
		}
	}
	e.t.Fatalf("snapshot %s logged as committed but not in %s", uuid, e.storeURL)
	return nil
}

// snapshots returns the manifests in the store.
func (e *env) snapshots() []*manifest.Manifest {
	e.t.Helper()
	ms, _, err := e.repo.List(context.Background(), "")
	must(e.t, err)
	return ms
}

// cli runs the podsnapshot CLI against this env's shim config and containerd.
func (e *env) cli(args ...string) (string, int) {
	e.t.Helper()
	bin := harness.BuildCLI(e.t)
	cmd := exec.Command(bin, append([]string{"--config", e.config}, args...)...)
	cmd.Env = append(os.Environ(), e.envVars...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("podsnapshot %v: %v", args, err)
	}
	return out.String(), code
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// forStores runs a test once per store kind.
func forStores(t *testing.T, test func(t *testing.T, kind storeKind)) {
	for _, kind := range []storeKind{localStore, gcsStore} {
		t.Run(string(kind), func(t *testing.T) { test(t, kind) })
	}
}

// uploadAllOrNothing checks the store after what (a delete of the pod) interrupted an
// upload: either the upload was abandoned and left no object, or it committed first and
// left one whole snapshot.
func (e *env) uploadAllOrNothing(what string) {
	e.t.Helper()
	all, ms := e.allObjects(), e.snapshots()
	switch {
	case len(ms) == 0 && len(all) == 0:
		e.t.Log("upload abandoned cleanly")
	case len(ms) == 1 && len(all) == 5: // 3 image files, manifest, index marker
		e.t.Logf("upload committed before the %s", what)
	default:
		e.t.Fatalf("after %s during upload: %d manifests, objects %v", what, len(ms), all)
	}
}
