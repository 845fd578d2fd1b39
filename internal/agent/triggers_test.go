package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
)

// fakeContainerd serves what triggers call: Containers.List (one sandbox per pod UID,
// "sb-<uid>"), Tasks.Get (running) and Tasks.Checkpoint, which blocks until release is
// closed, or fails at once for a sandbox in fail.
type fakeContainerd struct {
	tasks.UnimplementedTasksServer
	release chan struct{}
	fail    map[string]bool

	mu      sync.Mutex
	started []string // guarded by mu: sandboxes whose Checkpoint was called
}

var uidFilter = regexp.MustCompile(`labels\."io\.kubernetes\.pod\.uid"==([^,]+)`)

// fakeContainers is fakeContainerd's containers service.
type fakeContainers struct {
	containersapi.UnimplementedContainersServer
}

func (fakeContainers) List(_ context.Context, req *containersapi.ListContainersRequest) (*containersapi.ListContainersResponse, error) {
	var out []*containersapi.Container
	for _, flt := range req.Filters {
		if m := uidFilter.FindStringSubmatch(flt); m != nil {
			out = append(out, &containersapi.Container{ID: "sb-" + m[1]})
		}
	}
	return &containersapi.ListContainersResponse{Containers: out}, nil
}

func (f *fakeContainerd) Get(_ context.Context, req *tasks.GetRequest) (*tasks.GetResponse, error) {
	return &tasks.GetResponse{Process: &tasktypes.Process{ID: req.ContainerID, Status: tasktypes.Status_RUNNING}}, nil
}

func (f *fakeContainerd) Checkpoint(ctx context.Context, req *tasks.CheckpointTaskRequest) (*tasks.CheckpointTaskResponse, error) {
	f.mu.Lock()
	f.started = append(f.started, req.ContainerID)
	f.mu.Unlock()
	if f.fail[req.ContainerID] {
		return nil, status.Error(codes.FailedPrecondition, "container "+req.ContainerID+" is not a podsnapshot sandbox")
	}
	select {
	case <-f.release:
		return &tasks.CheckpointTaskResponse{}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *fakeContainerd) calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.started...)
}

// startContainerd serves f on a unix socket in a temp dir and returns a client for it.
func startContainerd(t *testing.T, f *fakeContainerd) *grpc.ClientConn {
	dir, err := os.MkdirTemp("", "ctrd")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "c.sock")
	l, err := net.Listen("unix", sock)
	must(t, err)
	srv := grpc.NewServer()
	containersapi.RegisterContainersServer(srv, fakeContainers{})
	tasks.RegisterTasksServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	must(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// manualPolicies writes a mirror file with a manual policy selecting app=counter in each
// namespace.
func manualPolicies(t *testing.T, namespaces ...string) string {
	sc := v1.PodSnapshotStorageConfig{ObjectMeta: metav1.ObjectMeta{Name: "local"},
		Spec: v1.PodSnapshotStorageConfigSpec{SnapshotStorageConfig: v1.SnapshotStorageConfig{Local: &v1.LocalStorage{Path: "/var/lib/podsnapshot/store"}}}}
	var pols []v1.PodSnapshotPolicy
	for _, ns := range namespaces {
		pols = append(pols, v1.PodSnapshotPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "manual"},
			Spec: v1.PodSnapshotPolicySpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "counter"}},
				StorageConfigName: "local", TriggerConfig: v1.TriggerConfig{Type: v1.TriggerManual, PostCheckpoint: v1.PostCheckpointResume},
				SnapshotScope: v1.ScopeWholePod}})
	}
	data, err := mirrorYAML([]v1.PodSnapshotStorageConfig{sc}, pols)
	must(t, err)
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "policies.yaml"), data, 0o600))
	return dir
}

// TestTriggersDoNotHoldWorkers: with containerd's Checkpoint blocking (large pods),
// Reconcile returns at once and the trigger is Checkpointing; at most
// maxCheckpointsPerNamespace checkpoints of one namespace and maxCheckpoints of the node
// run at once, the others are looked at again (not Checkpointing yet) and start once a
// slot is free; a Checkpoint call that fails fails its trigger.
func TestTriggersDoNotHoldWorkers(t *testing.T) {
	ctx := context.Background()
	nss := []string{"a", "b", "c", "d"}
	var objs []client.Object
	trig := func(ns, name string) reconcile.Request {
		return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}
	}
	addPod := func(ns, name string) {
		p := pod(name, ns+"-"+name)
		p.Namespace = ns
		objs = append(objs, p, &v1.PodSnapshotManualTrigger{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "t-" + name,
			CreationTimestamp: metav1.Now()}, Spec: v1.PodSnapshotManualTriggerSpec{TargetPod: name}})
	}
	for _, n := range []string{"p1", "p2", "p3"} {
		addPod("a", n) // one tenant with three large pods
	}
	for _, ns := range nss[1:] {
		addPod(ns, "p1")
	}
	addPod("e", "p1") // its Checkpoint call fails
	c := newFake(objs...)
	f := &fakeContainerd{release: make(chan struct{}), fail: map[string]bool{"sb-e-p1": true}}
	conn := startContainerd(t, f)
	var once sync.Once
	release := func() { once.Do(func() { close(f.release) }) }
	t.Cleanup(release)
	log := logrus.New()
	log.SetOutput(testWriter{t})
	tr := &triggers{c: c, node: node, policyDir: manualPolicies(t, "a", "b", "c", "d", "e"), conn: conn, log: log, now: time.Now}

	reconcileNow := func(req reconcile.Request) reconcile.Result {
		t.Helper()
		type out struct {
			res reconcile.Result
			err error
		}
		done := make(chan out, 1)
		go func() {
			res, err := tr.Reconcile(ctx, req)
			done <- out{res, err}
		}()
		select {
		case o := <-done:
			must(t, o.err)
			return o.res
		case <-time.After(5 * time.Second):
			t.Fatalf("Reconcile of trigger %s did not return within 5s while checkpoints run (checkpoint calls so far: %v)", req, f.calls())
			return reconcile.Result{}
		}
	}
	triggered := func(req reconcile.Request) *metav1.Condition {
		var got v1.PodSnapshotManualTrigger
		must(t, c.Get(ctx, req.NamespacedName, &got))
		return meta.FindStatusCondition(got.Status.Conditions, v1.ConditionTriggered)
	}
	checkpointing := func(req reconcile.Request) bool {
		cond := triggered(req)
		return cond != nil && cond.Status == metav1.ConditionUnknown && cond.Reason == ReasonCheckpointing
	}

	// Tenant a: two checkpoints run, the third waits.
	for _, n := range []string{"p1", "p2"} {
		if res := reconcileNow(trig("a", "t-"+n)); res.RequeueAfter != 0 || !checkpointing(trig("a", "t-"+n)) {
			t.Fatalf("a/t-%s: result %+v, Triggered %+v; want Checkpointing", n, res, triggered(trig("a", "t-"+n)))
		}
	}
	if res := reconcileNow(trig("a", "t-p3")); res.RequeueAfter <= 0 || triggered(trig("a", "t-p3")) != nil {
		t.Fatalf("a/t-p3 (namespace a at its limit): result %+v, Triggered %+v; want requeued, untouched", res, triggered(trig("a", "t-p3")))
	}
	// Other tenants still get the node's remaining slots.
	for _, ns := range []string{"b", "c"} {
		if res := reconcileNow(trig(ns, "t-p1")); res.RequeueAfter != 0 || !checkpointing(trig(ns, "t-p1")) {
			t.Fatalf("%s/t-p1: result %+v, Triggered %+v; want Checkpointing while namespace a's run", ns, res, triggered(trig(ns, "t-p1")))
		}
	}
	// The node is full: d waits.
	if res := reconcileNow(trig("d", "t-p1")); res.RequeueAfter <= 0 || triggered(trig("d", "t-p1")) != nil {
		t.Fatalf("d/t-p1 (node full): result %+v, Triggered %+v; want requeued", res, triggered(trig("d", "t-p1")))
	}
	// The Checkpoint calls run in the triggers' goroutines: they reach containerd a moment
	// after Reconcile marked the trigger Checkpointing.
	waitFor(t, "4 checkpoint calls in flight (the node's limit)", func() bool { return len(f.calls()) == 4 })
	time.Sleep(50 * time.Millisecond) // a fifth call would show now
	if got := f.calls(); len(got) != 4 {
		t.Fatalf("checkpoint calls %v, want 4 in flight (the node's limit)", got)
	}
	// The checkpoints end; the waiting triggers start, and e's failing call fails it.
	release()
	waitFor(t, "d/t-p1 and a/t-p3 Checkpointing once slots are free", func() bool {
		for _, req := range []reconcile.Request{trig("d", "t-p1"), trig("a", "t-p3")} {
			if !checkpointing(req) {
				reconcileNow(req)
			}
		}
		return checkpointing(trig("d", "t-p1")) && checkpointing(trig("a", "t-p3"))
	})
	reconcileNow(trig("e", "t-p1"))
	waitFor(t, "e/t-p1 Failed", func() bool {
		cond := triggered(trig("e", "t-p1"))
		return cond != nil && cond.Status == metav1.ConditionFalse && strings.Contains(cond.Message, "is not a podsnapshot sandbox")
	})
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal(fmt.Sprintf("timed out waiting for %s", what))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
