package podsnap

import "context"

// Task is one container of a pod as the lifecycle drives it: the shim's container, over
// runsc. The lifecycle never runs runsc itself; everything it needs of runsc and of the
// task service goes through these methods, so its tests run with a fake.
//
// Calls on one Task are serialized by the lifecycle (the pod's deferred-restore lock, or
// the RPC that owns the task); implementations guard their own state.
type Task interface {
	// ID is the containerd container ID.
	ID() string

	// Create runs `runsc create` for the task from its bundle with fresh stdio and records
	// its pid. On error nothing of it is left in runsc.
	Create(ctx context.Context) error
	// Launch runs the created task: `runsc start`, or, when img is set, `runsc restore
	// --background` from the image files in img.Dir (a restore is a start with a restore
	// config, as in gVisor's shim), with --direct when img.Direct.
	Launch(ctx context.Context, img *RestoreImage) error
	// Destroy removes the task from runsc (`runsc delete --force`) and closes its stdio,
	// so that Create can make it afresh.
	Destroy(ctx context.Context) error
	// Kill signals every process of the task (`runsc kill --all`); used for a created
	// task that never ran.
	Kill(ctx context.Context, signal int) error
	// WriteSpec writes the task's bundle config.json: the spec containerd gave plus the
	// annotations add (gVisor's checkpoint annotations). The spec the snapshot key is
	// computed from stays as containerd gave it.
	WriteSpec(add map[string]string) error

	// Started tells containerd the task runs (status RUNNING, TaskStart). It may come
	// before runsc runs the task (a container waiting for its pod's restore); calls after
	// the first do nothing.
	Started()
	// Watch begins watching the exit of a task runsc now runs (`runsc wait`); the task
	// service reports it as TaskExit.
	Watch()
	// Exit ends a task that runsc does not run (killed while it waited, or it could not
	// be started) with status, as TaskExit.
	Exit(status int)
	// Exited reports whether the task has ended.
	Exited() bool
	// TarRootfs writes the upper layer of the task's rootfs overlay (what its processes
	// wrote; deletions as overlayfs whiteouts) into a tar archive at file (`runsc tar
	// rootfs-upper`); the task must run (its sandbox may be frozen).
	TarRootfs(ctx context.Context, file string) error

	// Sandbox tasks only: the root container of the runsc sandbox.

	// WatchCheckpoint starts waiting for the workload's next checkpoint of the sandbox
	// (`runsc wait --checkpoint`) and returns once gVisor has registered the wait; the
	// channel then receives nil for a completed save, or an error for a failed save or
	// the sandbox gone. gVisor waits for the checkpoint after the current one, so a watch
	// must be armed before the workload can trigger: before `runsc start`.
	WatchCheckpoint(ctx context.Context) <-chan error
	// Freeze pauses every container of the sandbox (`runsc pause`) for a consistent
	// rootfs-only snapshot, without a state change containerd sees; Thaw resumes them.
	Freeze(ctx context.Context) error
	Thaw(ctx context.Context) error
	// Checkpoint saves the sandbox into dir (`runsc checkpoint`, uncompressed);
	// leaveRunning keeps it running afterwards (postCheckpoint resume).
	Checkpoint(ctx context.Context, dir string, leaveRunning bool) error
}

// RestoreImage is what a restore reads: the image directory, and how gVisor reads its
// pages file.
type RestoreImage struct {
	// Dir holds checkpoint.img, pages_meta.img and pages.img: a node cache entry, a
	// private download, or the FUSE mount of a streaming restore.
	Dir string
	// Direct: gVisor opens pages.img with O_DIRECT (`runsc restore --direct`). Set for
	// plain files only (fetch.restoreImage, config restore_direct): gVisor's loader reads
	// a page-cached regular file several times slower than the same bytes through
	// O_DIRECT or the shim's FUSE mount (docs/architecture.md, "Cached restores").
	Direct bool
}
