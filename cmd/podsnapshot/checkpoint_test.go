package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
)

// fakeTasks is containerd's tasks service as far as `podsnapshot checkpoint` uses it.
type fakeTasks struct {
	tasks.UnimplementedTasksServer
	// checkpoint answers a Checkpoint call; namespace is the request's containerd namespace.
	checkpoint func(namespace, id string) error
}

func (f *fakeTasks) Checkpoint(ctx context.Context, r *tasks.CheckpointTaskRequest) (*tasks.CheckpointTaskResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	ns := strings.Join(md.Get(namespaces.GRPCHeader), ",")
	if err := f.checkpoint(ns, r.ContainerID); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &tasks.CheckpointTaskResponse{}, nil
}

// serveTasks serves f on a unix socket and returns its path.
func serveTasks(t *testing.T, f *fakeTasks) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctrd") // short: socket paths are limited to ~100 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "containerd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	tasks.RegisterTasksServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return sock
}

func TestCheckpoint(t *testing.T) {
	fx := newFixture(t)
	var committed *manifest.Manifest
	var gotNS, gotID string
	sock := serveTasks(t, &fakeTasks{checkpoint: func(ns, id string) error {
		gotNS, gotID = ns, id
		if id == "unmatched" {
			return errdefs.ErrFailedPrecondition.WithMessage("pod of container unmatched is not matched by any PodSnapshotPolicy: nothing to checkpoint to")
		}
		// As the shim does: commit a snapshot of the container's pod before answering.
		committed = fx.commit("jobs", "batch", 0, 9)
		committed.Source.SandboxID = id
		if err := fx.rewrite(committed); err != nil {
			t.Error(err)
		}
		return nil
	}})

	r := fx.run("checkpoint", "--address", sock, "-n", "k8s.io", "pod-a").must(t)
	if gotNS != "k8s.io" || gotID != "pod-a" {
		t.Errorf("containerd got namespace %q container %q", gotNS, gotID)
	}
	if !strings.HasPrefix(r.stdout, "checkpoint of pod-a committed\n") {
		t.Errorf("stdout %q", r.stdout)
	}
	if !strings.Contains(r.stdout, "PodSnapshot jobs/"+committed.UUID+" (policy batch)") {
		t.Errorf("new snapshot not shown: %q", r.stdout)
	}

	// The namespace defaults to $CONTAINERD_NAMESPACE, else "default".
	t.Setenv("CONTAINERD_NAMESPACE", "")
	fx.run("checkpoint", "--address", "unix://"+sock, "pod-b").must(t)
	if gotNS != "default" {
		t.Errorf("default namespace: containerd got %q", gotNS)
	}

	r = fx.run("checkpoint", "--address", sock, "unmatched")
	if r.code != 1 || !strings.Contains(r.stderr, "podsnapshot checkpoint: checkpoint of unmatched (containerd namespace default): pod of container unmatched is not matched") {
		t.Errorf("shim error: %+v", r)
	}

	start := time.Now()
	r = fx.run("checkpoint", "--address", filepath.Join(t.TempDir(), "none.sock"), "pod-a")
	if r.code != 1 || !strings.Contains(r.stderr, "containerd socket:") || time.Since(start) > 5*time.Second {
		t.Errorf("missing socket: %+v", r)
	}
}
