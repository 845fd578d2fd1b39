package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/pkg/dialer"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// defaultAddress is containerd's default gRPC socket.
const defaultAddress = "/run/containerd/containerd.sock"

var checkpointCommand = &command{
	name:    "checkpoint",
	usage:   "[--address SOCKET] [--namespace NS] [--timeout DURATION] CONTAINER",
	summary: "snapshot a container's pod now, through containerd",
	help: `
Asks containerd (its tasks API, as 'ctr task checkpoint' does) to checkpoint CONTAINER, a
container ID of containerd namespace NS (under Kubernetes: k8s.io). The podsnapshot shim
snapshots the container's whole pod to the storage of the pod's policy and answers once
the snapshot is committed. Meant for policies with triggerConfig.type: manual; a pod no
policy matches is an error. Afterwards the new snapshot is looked up in the policy
directory's stores and shown when found.

--address and --namespace default to $CONTAINERD_ADDRESS and $CONTAINERD_NAMESPACE, else
` + defaultAddress + ` and "default".`,
	run: runCheckpoint,
}

func runCheckpoint(ctx context.Context, c *cli, args []string) error {
	fs := c.flagSet()
	var address, namespace string
	c.stringFlag(fs, &address, "a", "address", envOr("CONTAINERD_ADDRESS", defaultAddress), "containerd's gRPC `socket`")
	c.stringFlag(fs, &namespace, "n", "namespace", envOr("CONTAINERD_NAMESPACE", "default"), "containerd `namespace` of the container")
	timeout := fs.Duration("timeout", 0, "give up after this long (0: wait for the commit however long it takes)")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one CONTAINER, got %d arguments", len(pos))
	}
	id := pos[0]
	address = strings.TrimPrefix(address, "unix://")
	// The dialer retries a missing socket forever: say so at once instead.
	if _, err := os.Stat(address); err != nil {
		return fmt.Errorf("containerd socket: %w", err)
	}
	conn, err := grpc.NewClient(dialer.DialAddress(address),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: 10 * time.Second}))
	if err != nil {
		return fmt.Errorf("connect to containerd at %s: %w", address, err)
	}
	defer conn.Close()

	cctx := namespaces.WithNamespace(ctx, namespace)
	if *timeout > 0 {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(cctx, *timeout)
		defer cancel()
	}
	start := c.now()
	if _, err := tasks.NewTasksClient(conn).Checkpoint(cctx, &tasks.CheckpointTaskRequest{ContainerID: id}); err != nil {
		return fmt.Errorf("checkpoint of %s (containerd namespace %s): %w", id, namespace, errgrpc.ToNative(err))
	}
	fmt.Fprintf(c.stdout, "checkpoint of %s committed\n", id)
	c.showNewSnapshot(ctx, id, start)
	return nil
}

// showNewSnapshot prints the newest snapshot taken from container id's pod since start,
// if the policy directory's stores hold one; anything in the way is only logged (--debug).
func (c *cli) showNewSnapshot(ctx context.Context, id string, start time.Time) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	quiet := *c
	quiet.stderr = io.Discard
	e, err := quiet.openEnv(ctx)
	if err != nil {
		c.log.WithError(err).Debug("look up the new snapshot")
		return
	}
	defer e.close()
	snaps, err := quiet.snapshots(ctx, e, "")
	if err != nil {
		c.log.WithError(err).Debug("look up the new snapshot")
	}
	var newest *snapshot
	for i, s := range snaps {
		// Committed manifests record the checkpoint's start; allow for a second of rounding.
		if s.CreatedAt.Before(start.Add(-time.Second)) || !fromContainer(s, id) {
			continue
		}
		if newest == nil || s.CreatedAt.After(newest.CreatedAt) {
			newest = &snaps[i]
		}
	}
	if newest == nil {
		return
	}
	_, stored := newest.Sizes()
	fmt.Fprintf(c.stdout, "PodSnapshot %s (policy %s): %d files, %s stored in %s\n",
		newest.ID(), newest.Policy, len(newest.Files), humanBytes(stored), newest.PodSnapshot(newest.store.url).Status.StoragePath)
}

// fromContainer reports whether s was taken from a pod that container id is part of.
func fromContainer(s snapshot, id string) bool {
	if s.Source.SandboxID == id {
		return true
	}
	for _, ci := range s.Source.Containers {
		if ci.ID == id {
			return true
		}
	}
	return false
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
