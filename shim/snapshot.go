package shim

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/policy"
	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/checkpoint/retention"
	"github.com/podsnapshot/podsnapshot/checkpoint/snapkey"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
	"github.com/podsnapshot/podsnapshot/runtime/runsc"
	"github.com/podsnapshot/podsnapshot/storage"
)

// Annotations this project reads or sets.
const (
	// PSNameAnnotation names the snapshot (its UUID) to restore from, instead of the newest.
	PSNameAnnotation = "podsnapshot.gke.io/ps-name"

	// gVisor's workload-trigger annotations (runsc/boot/restore.go): with them the sandbox
	// shows /proc/gvisor/checkpoint and saves itself into path when the workload writes 1.
	annCheckpointPrefix      = "dev.gvisor.internal.checkpoint."
	annCheckpointPath        = annCheckpointPrefix + "path"
	annCheckpointEnable      = annCheckpointPrefix + "enable"
	annCheckpointResume      = annCheckpointPrefix + "resume"
	annCheckpointCompression = annCheckpointPrefix + "compression"
	annCheckpointDirect      = annCheckpointPrefix + "direct"
)

// uploadCodec compresses snapshots on their way to storage. One encoder goroutine keeps
// the shim near 20 MiB during an upload (parallel zstd held about 200 MiB on a 2-core
// node) at about the same throughput on memory images, which are mostly copying.
var uploadCodec = storage.Zstd{Concurrency: 1}

// minUploadRatio is the zstd ratio on a sample of an image file below which the file is
// stored uncompressed (repo.Repo.MinRatio): under 10% saved, compression costs about 3
// CPU seconds per GB on upload and a decompression on restore for little less to store.
const minUploadRatio = 1.1

// lookupTimeout bounds how long an unreachable store can delay Create before the pod
// starts cold (DESIGN.md: at most 5 s added).
const lookupTimeout = 4 * time.Second

// podSnap is the snapshot state of one sandbox matched by a policy.
type podSnap struct {
	entry     *policy.Entry
	repo      *repo.Repo
	namespace string // the pod's namespace (policy namespace)
	// sandboxKey is the key of the sandbox container alone, which a new pod's snapshot is
	// looked up by (manifest.IndexKey); sandbox is that container as the key saw it.
	sandboxKey string
	sandbox    snapkey.Container
	tuple      compat.Tuple
	labels     map[string]string
	source     manifest.Source
	workDir    string // <work_dir>/<namespace>/<sandbox id>: owned by this sandbox

	// restore is the snapshot the sandbox restores from at Start; nil for a cold start.
	restore *manifest.Manifest
	// lookupStart is when the snapshot lookup began, at the sandbox's Create.
	lookupStart time.Time
	// downloaded is closed once the download of restore, which runs alongside `runsc
	// create`, is over; nil when there was nothing to download (node cache). The fields
	// below it are written by the download before it closes and read after it.
	downloaded     chan struct{}
	cancelDownload context.CancelFunc
	// downloadFailed says why the download failed ("" when it did not).
	downloadFailed string
	restoreDir     string // a node cache entry, or a private download when ownRestoreDir
	downloadTook   time.Duration
	// ownRestoreDir: restoreDir is this sandbox's alone (the cache is disabled) and is
	// removed with the sandbox.
	ownRestoreDir bool
	// deferred is the restore of a snapshot of several containers, set at the sandbox's
	// Start (podrestore.go) and read by the calls for its containers.
	deferred atomic.Pointer[deferredRestore]

	// membersMu guards members: the containers that joined the sandbox, in order, which
	// a checkpoint records with the sandbox.
	membersMu sync.Mutex
	members   []*container

	// trigger: the workload may checkpoint itself into checkpointDir.
	workloadTrigger bool
	checkpointDir   string
	stop            bool // postCheckpoint: stop

	// busy allows one checkpoint per sandbox at a time.
	busy sync.Mutex
	// tookCheckpoint is set once a checkpoint that stops the sandbox has been taken;
	// result then receives that snapshot's commit result, once.
	tookCheckpoint atomic.Bool
	result         chan error
	// sandboxGone is closed when `runsc wait` on the sandbox's init has returned.
	sandboxGone     chan struct{}
	sandboxGoneOnce sync.Once
	// cancelMu guards cancel and abandoned. cancel aborts the commit in progress;
	// abandoned (set by Kill of a stop-mode sandbox, or Delete) stops any later commit
	// from starting and holds the signal that ended the task.
	cancelMu  sync.Mutex
	cancel    context.CancelFunc
	abandoned int
	// commits counts commits in flight, so Delete can wait for an aborted one to delete
	// what it had uploaded.
	commits sync.WaitGroup
}

func (ps *podSnap) policyName() string { return ps.entry.Policy.Name }

// decide logs the one line per Create that says what happened to the pod and why.
func decide(ctx context.Context, id, decision, why string) {
	log.G(ctx).WithFields(log.Fields{"id": id, "decision": decision}).Infof("podsnapshot: %s: %s", decision, why)
}

// loader returns the policy loader of dir; one per directory for the shim's life, so
// changed files are picked up without a restart.
func (s *Service) loader(dir string) *policy.Loader {
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	l, ok := s.loaders[dir]
	if !ok {
		l = policy.NewLoader(policy.Options{Dir: dir})
		s.loaders[dir] = l
	}
	return l
}

// store opens (once) the store at url.
func (s *Service) store(ctx context.Context, url string) (storage.Store, error) {
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	if st, ok := s.stores[url]; ok {
		return st, nil
	}
	// 8 MiB parts and read chunks: with 4 in flight a transfer holds about 40 MiB, which
	// keeps the shim's memory well under 100 MiB whatever the snapshot size.
	st, err := storage.Open(ctx, url, storage.WithPartSize(8<<20), storage.WithReadChunkSize(8<<20))
	if err != nil {
		return nil, err
	}
	s.stores[url] = st
	return st, nil
}

// localTuple is this node's compatibility tuple for r (cached per runsc binary and flags).
func (s *Service) localTuple(ctx context.Context, r *runsc.Runsc, cacheFile string) (compat.Tuple, error) {
	cacheKey := fmt.Sprint(r.Path, r.Flags)
	s.cacheMu.Lock()
	t, ok := s.tuples[cacheKey]
	s.cacheMu.Unlock()
	if ok {
		return t, nil
	}
	version, err := runscIdentity(ctx, r, cacheFile)
	if err != nil {
		return compat.Tuple{}, err
	}
	t, err = compat.Local(ctx, compat.Options{RunscVersion: version, RunscFlags: r.Flags})
	if err != nil {
		return compat.Tuple{}, err
	}
	s.cacheMu.Lock()
	s.tuples[cacheKey] = t
	s.cacheMu.Unlock()
	return t, nil
}

// planSnapshot decides, at Create of a sandbox, whether it restores from a snapshot,
// may checkpoint, or is a plain runsc pod. It never fails: whatever goes wrong is a
// cold start with the reason logged. It may rewrite the bundle's config.json (trigger
// annotations), which must happen before `runsc create`.
func (s *Service) planSnapshot(ctx context.Context, c *container) *podSnap {
	start := time.Now()
	ns := c.spec.Annotations[oci.SandboxNamespaceAnnotation]
	if ns == "" {
		ns = s.namespace
	}
	loader := s.loader(c.cfg.PolicyDir)
	if !hasPolicyIn(loader.Current(), ns) {
		// The common case on a node: no policy could match, so containerd is not asked
		// for the labels.
		decide(ctx, c.id, "plain runsc", fmt.Sprintf("no PodSnapshotPolicy in namespace %s (policy dir %s)", ns, loader.Dir()))
		return nil
	}
	rec, err := lookupContainer(ctx, s.address, s.namespace, c.id)
	if err != nil {
		decide(ctx, c.id, "cold start", fmt.Sprintf("cannot read the container's labels: %v", err))
		return nil
	}
	match := loader.Match(ns, rec.Labels)
	if w := match.Warning(); w != "" {
		log.G(ctx).Warn(w)
	}
	if !match.Found() {
		decide(ctx, c.id, "plain runsc", fmt.Sprintf("no PodSnapshotPolicy in namespace %s matches labels %v (policy dir %s)", ns, rec.Labels, loader.Dir()))
		return nil
	}
	entry := match.Entry
	tuple, err := s.localTuple(ctx, c.runsc, filepath.Join(c.cfg.WorkDir, "runsc-identity"))
	if err != nil {
		decide(ctx, c.id, "cold start", fmt.Sprintf("policy %s: %v", entry.ID(), err))
		return nil
	}
	image := rec.Image
	if image == "" {
		image = c.spec.Annotations[oci.ImageNameAnnotation]
	}
	name := c.spec.Annotations[oci.ContainerNameAnnotation]
	if name == "" {
		name = "main"
	}
	sandbox := snapkey.Container{Name: name, Image: image, ImageDigest: rec.ImageDigest, Spec: c.spec, Sandbox: true}
	key, err := snapkey.Compute(snapkey.Input{
		Namespace:   ns,
		Policy:      entry.Policy.Name,
		GroupLabels: entry.Policy.GroupLabels(),
		PodLabels:   rec.Labels,
		Containers:  []snapkey.Container{sandbox},
	})
	if err != nil {
		decide(ctx, c.id, "cold start", fmt.Sprintf("policy %s: snapshot key: %v", entry.ID(), err))
		return nil
	}
	st, err := s.store(ctx, entry.StoreURL)
	if err != nil {
		decide(ctx, c.id, "cold start", fmt.Sprintf("policy %s: %v", entry.ID(), err))
		return nil
	}
	ps := &podSnap{
		entry:       entry,
		repo:        &repo.Repo{Store: st, Codec: uploadCodec, MinRatio: minUploadRatio},
		namespace:   ns,
		sandboxKey:  key,
		sandbox:     sandbox,
		tuple:       tuple,
		labels:      rec.Labels,
		workDir:     filepath.Join(c.cfg.WorkDir, s.namespace, c.id),
		stop:        entry.Policy.Spec.TriggerConfig.PostCheckpoint == v1.PostCheckpointStop,
		result:      make(chan error, 1),
		sandboxGone: make(chan struct{}),
		source: manifest.Source{
			Pod:       c.spec.Annotations[oci.SandboxNameAnnotation],
			SandboxID: c.id,
			Containers: []manifest.ContainerInfo{{
				Name: name, ID: c.id, Image: image, ImageDigest: rec.ImageDigest, Sandbox: true,
			}},
		},
	}
	if host, err := os.Hostname(); err == nil {
		ps.source.Node = host
	}

	why, restored := s.findAndDownload(ctx, c, ps)
	if restored {
		if ps.downloaded == nil {
			decide(ctx, c.id, "restore", why)
		} else {
			// The decision waits for the download: restoreOrStart or restorePod says it.
			log.G(ctx).WithField("id", c.id).Infof("podsnapshot: %s", why)
		}
		return ps
	}
	if entry.Policy.Spec.TriggerConfig.Type == v1.TriggerWorkload {
		if err := s.enableWorkloadTrigger(c, ps); err != nil {
			decide(ctx, c.id, "cold start", fmt.Sprintf("%s; policy %s: workload trigger not enabled: %v", why, entry.ID(), err))
			return ps
		}
	}
	decide(ctx, c.id, "cold start", fmt.Sprintf("%s (policy %s, %s trigger, lookup %d ms)",
		why, entry.ID(), entry.Policy.Spec.TriggerConfig.Type, time.Since(start).Milliseconds()))
	return ps
}

func hasPolicyIn(set *policy.Set, namespace string) bool {
	for _, e := range set.Policies {
		if e.Policy.Namespace == namespace {
			return true
		}
	}
	return false
}

// findAndDownload looks up the snapshot to restore. It returns the reason for the
// decision and whether the sandbox restores. A snapshot in the node cache is ready at
// once; any other is downloaded into the node cache in the background, alongside `runsc
// create` and whatever containerd does before Start: awaitDownload waits for it.
func (s *Service) findAndDownload(ctx context.Context, c *container, ps *podSnap) (string, bool) {
	t0 := time.Now()
	ps.lookupStart = t0
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	var (
		m   *manifest.Manifest
		why string
		err error
	)
	if name := c.spec.Annotations[PSNameAnnotation]; name != "" {
		m, err = ps.repo.Get(lctx, ps.namespace, ps.policyName(), name)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			m, err, why = nil, nil, fmt.Sprintf("no snapshot named %s (annotation %s) in %s for policy %s",
				name, PSNameAnnotation, ps.repo.Store.URL(""), ps.entry.ID())
		case err != nil:
		case m.State != manifest.StateCommitted:
			why, m = fmt.Sprintf("snapshot %s/%s named by %s is %s", ps.namespace, name, PSNameAnnotation, m.State), nil
		case m.IndexKey() != ps.sandboxKey:
			why, m = fmt.Sprintf("snapshot %s/%s named by %s was taken from another pod spec", ps.namespace, name, PSNameAnnotation), nil
		default:
			if r := compat.Incompatible(m.Compat, ps.tuple); r != "" {
				why, m = fmt.Sprintf("incompatible snapshot %s/%s: %s", ps.namespace, name, r), nil
			}
		}
	} else {
		m, why, err = ps.repo.Find(lctx, ps.namespace, ps.policyName(), ps.sandboxKey, ps.tuple)
	}
	if err != nil {
		if lctx.Err() != nil {
			return fmt.Sprintf("storage %s unreachable after %.1f s: %v", ps.repo.Store.URL(""), time.Since(t0).Seconds(), err), false
		}
		return fmt.Sprintf("snapshot lookup in %s failed: %v", ps.repo.Store.URL(""), err), false
	}
	if m == nil {
		return why, false
	}
	nodeCache := &cache.Cache{Dir: c.cfg.Cache(), MaxBytes: c.cfg.CacheMaxBytes}
	if dir, ok := nodeCache.Get(m.UUID); ok {
		ps.restore, ps.restoreDir, ps.downloadTook = m, dir, time.Since(t0)
		return fmt.Sprintf("snapshot %s/%s (policy %s) found in the node cache %s",
			ps.namespace, m.UUID, ps.entry.ID(), nodeCache.Dir), true
	}
	// The download outlives Create's RPC; Kill, Delete and a Start that gives up cancel it.
	dctx, dcancel := context.WithCancel(context.WithoutCancel(ctx))
	ps.restore, ps.downloaded, ps.cancelDownload = m, make(chan struct{}), dcancel
	go func() {
		defer close(ps.downloaded)
		defer dcancel()
		dir, cached, err := nodeCache.Fill(m.UUID, func(dir string) error { return ps.repo.Download(dctx, m, dir) })
		if err == nil && dctx.Err() != nil {
			// Cancelled as it finished: nobody will use or remove a private copy.
			if !cached {
				os.RemoveAll(dir)
			}
			err = dctx.Err()
		}
		ps.downloadTook = time.Since(t0)
		switch {
		case err == nil:
			ps.restoreDir, ps.ownRestoreDir = dir, !cached
		case errors.Is(err, storage.ErrCorrupt):
			if merr := ps.repo.MarkFailed(context.WithoutCancel(dctx), m, err.Error()); merr != nil {
				log.G(dctx).WithError(merr).Warn("could not mark the corrupt snapshot failed")
			}
			ps.downloadFailed = fmt.Sprintf("snapshot %s/%s is corrupt (marked failed): %v", ps.namespace, m.UUID, err)
		default:
			ps.downloadFailed = fmt.Sprintf("download of snapshot %s/%s failed: %v", ps.namespace, m.UUID, err)
		}
	}()
	return fmt.Sprintf("snapshot %s/%s (policy %s) found in %d ms; downloading it while runsc creates the sandbox",
		ps.namespace, m.UUID, ps.entry.ID(), time.Since(t0).Milliseconds()), true
}

// awaitDownload waits for the snapshot's download, or for ctx to end (the download is
// then cancelled), and says, for the decision line, how it went: ok with its time, or
// why the pod starts cold.
func (ps *podSnap) awaitDownload(ctx context.Context) (why string, ok bool) {
	if ps.downloaded == nil {
		return "", true
	}
	select {
	case <-ps.downloaded:
	case <-ctx.Done():
		ps.stopDownload()
		return fmt.Sprintf("gave up waiting for the download of snapshot %s/%s: %v", ps.namespace, ps.restore.UUID, ctx.Err()), false
	}
	if ps.downloadFailed != "" {
		return ps.downloadFailed, false
	}
	return fmt.Sprintf("snapshot %s/%s (policy %s) downloaded and verified in %d ms",
		ps.namespace, ps.restore.UUID, ps.entry.ID(), ps.downloadTook.Milliseconds()), true
}

// abortDownload cancels a download still running, without waiting for it.
func (ps *podSnap) abortDownload() {
	if ps != nil && ps.downloaded != nil {
		ps.cancelDownload()
	}
}

// stopDownload cancels a download still running and waits up to downloadStopTimeout for
// it to end. It reports whether the download is over; one that is not yet cleans up
// after itself (a cancelled download keeps no files).
func (ps *podSnap) stopDownload() bool {
	if ps.downloaded == nil {
		return true
	}
	ps.cancelDownload()
	select {
	case <-ps.downloaded:
		return true
	case <-time.After(downloadStopTimeout):
		log.L.Warnf("podsnapshot: the cancelled download of snapshot %s/%s has not ended after %s; leaving it",
			ps.namespace, ps.restore.UUID, downloadStopTimeout)
		return false
	}
}

// downloadStopTimeout bounds how long Delete waits for a cancelled download to end.
const downloadStopTimeout = 10 * time.Second

// dropInternalAnnotations removes gVisor's internal annotations (dev.gvisor.internal.*)
// that came with a container's spec, and rewrites the spec in bundle when there were
// any. CRI passes pod annotations matching the handler's pod_annotations (dev.gvisor.*)
// to the shim, and these would let any pod author make runsc write a checkpoint of the
// pod into any host directory (checkpoint.path); only the shim sets them. It returns
// the names removed, sorted.
func dropInternalAnnotations(bundle string, spec *specs.Spec) ([]string, error) {
	var dropped []string
	for k := range spec.Annotations {
		if strings.HasPrefix(k, "dev.gvisor.internal.") {
			dropped = append(dropped, k)
		}
	}
	if len(dropped) == 0 {
		return nil, nil
	}
	sort.Strings(dropped)
	for _, k := range dropped {
		delete(spec.Annotations, k)
	}
	return dropped, oci.WriteSpec(bundle, spec)
}

// enableWorkloadTrigger adds gVisor's checkpoint annotations to the bundle's spec so the
// workload can checkpoint itself by writing 1 to /proc/gvisor/checkpoint. runsc writes
// the image uncompressed: the shim compresses it on the way to storage, faster than
// runsc's flate.
func (s *Service) enableWorkloadTrigger(c *container, ps *podSnap) error {
	dir := filepath.Join(ps.workDir, "checkpoint")
	// runsc opens the image files at create: a directory it cannot write to would fail
	// the pod, so the trigger is enabled only where a file can be made.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("checkpoint directory: %w", err)
	}
	probe, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return fmt.Errorf("checkpoint directory not writable: %w", err)
	}
	probe.Close()
	direct := c.cfg.SaveDirect && opensODirect(probe.Name())
	os.Remove(probe.Name())
	ps.checkpointDir = dir
	if err := writeSpecWith(c, map[string]string{
		annCheckpointPath:        ps.checkpointDir,
		annCheckpointEnable:      "true",
		annCheckpointResume:      fmt.Sprint(!ps.stop),
		annCheckpointCompression: "none",
		annCheckpointDirect:      fmt.Sprint(direct),
	}); err != nil {
		return err
	}
	ps.workloadTrigger = true
	return nil
}

// opensODirect reports whether the file at path opens with O_DIRECT, which its
// filesystem may refuse (tmpfs does). runsc opens the checkpoint's pages file at create,
// with O_DIRECT when the direct annotation says so, and fails the pod where it cannot:
// the shim asks for it (config save_direct) only where its probe file opens that way.
//
// The trade, measured on the 2-core development VM (the workload is paused during the
// save): through the page cache 64 MiB saved in 0.07 s, 512 MiB in 0.32 s, 2 GiB in
// 2.8-4.9 s; with O_DIRECT 0.15 s, 0.6 s and 1.3-1.6 s, and the upload then reads the
// image from disk rather than from memory. Hence off by default.
func opensODirect(path string) bool {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// enableMemberTrigger lets container c, joining a sandbox that may checkpoint itself,
// trigger the checkpoint too. gVisor mounts /proc per container and makes
// /proc/gvisor/checkpoint writable only where that container's own spec has the enable
// annotation; the save itself follows the sandbox's annotations and saves every
// container. Called before `runsc create` of c; a no-op for other pods.
func enableMemberTrigger(sb, c *container) error {
	if sb.snap == nil || !sb.snap.workloadTrigger || sb.snap.restore != nil {
		return nil
	}
	return writeSpecWith(c, map[string]string{annCheckpointEnable: "true"})
}

// writeSpecWith writes c's spec plus the annotations add to its bundle, for runsc; c.spec,
// which the snapshot key is computed from, stays as containerd gave it.
func writeSpecWith(c *container, add map[string]string) error {
	spec := *c.spec
	spec.Annotations = maps.Clone(c.spec.Annotations)
	if spec.Annotations == nil {
		spec.Annotations = map[string]string{}
	}
	maps.Copy(spec.Annotations, add)
	return oci.WriteSpec(c.bundle, &spec)
}

// restoreOrStart runs a created container: `runsc restore` from the downloaded snapshot
// when its sandbox has one of the sandbox alone, else `runsc start`. A failed restore
// tears the sandbox down and starts the pod cold from the same bundle.
func (s *Service) restoreOrStart(ctx context.Context, c *container) error {
	ps := c.snap
	if ps == nil || ps.restore == nil {
		return s.launch(ctx, c, "")
	}
	why, downloaded := ps.awaitDownload(ctx)
	if downloaded {
		if ps.downloaded != nil {
			decide(ctx, c.id, "restore", why)
		}
		t0 := time.Now()
		err := s.launch(ctx, c, ps.restoreDir)
		if err == nil {
			ps.logRestored(ctx, c.id, 1, 0, time.Since(t0))
			return nil
		}
		why = fmt.Sprintf("runsc restore from snapshot %s/%s failed: %v", ps.namespace, ps.restore.UUID, err)
		// The files may be what failed: the next restore downloads them afresh.
		os.RemoveAll(ps.restoreDir)
	} else if c.init.exited() {
		return fmt.Errorf("container %s was killed while its snapshot downloaded", c.id)
	}
	decide(ctx, c.id, "cold start", why)
	ps.dropRestore()
	// After a failed download nothing has run in the sandbox, and it is what a cold start
	// of a manual policy creates (only a workload trigger changes the spec): start it.
	if !downloaded && ps.entry.Policy.Spec.TriggerConfig.Type != v1.TriggerWorkload {
		return s.launch(ctx, c, "")
	}
	if err := s.recreate(ctx, c); err != nil {
		return err
	}
	return s.launch(ctx, c, "")
}

// logRestored logs the event line of a restore of n containers: its time since the
// lookup began (Create of the sandbox), of which the download (alongside runsc create),
// the wait for the pod's containers (CRI) and runsc restore.
func (ps *podSnap) logRestored(ctx context.Context, id string, n int, waited, restore time.Duration) {
	pod, waitedPart := "", ""
	if n > 1 {
		pod = fmt.Sprintf(" with %d containers", n)
		waitedPart = fmt.Sprintf(", waited for containers %d ms", waited.Milliseconds())
	}
	log.G(ctx).WithFields(log.Fields{"id": id, "decision": "restored", "reason": v1.EventReason}).Infof(
		"podsnapshot: restored: Successfully restored the pod from PodSnapshot %s/%s%s in %d ms (download %d ms%s, runsc restore %d ms)",
		ps.namespace, ps.restore.UUID, pod, time.Since(ps.lookupStart).Milliseconds(),
		ps.downloadTook.Milliseconds(), waitedPart, restore.Milliseconds())
	ps.touchLater(ctx)
}

// launch runs created container c: `runsc start`, or `runsc restore` from imageDir when
// it is set. A container joining a sandbox gets its stdio from the runsc command, which
// is connected to containerd's afterwards.
func (s *Service) launch(ctx context.Context, c *container, imageDir string) error {
	var io runsc.IO
	if !c.sandbox {
		io = c.init.io.runscIO()
	}
	var err error
	if imageDir == "" {
		err = c.runsc.Start(ctx, c.id, runsc.StartOpts{IO: io})
	} else {
		// Background: the sandbox resumes once its kernel state is loaded and pulls the
		// application's pages in behind it (gVisor allows it for uncompressed images,
		// which the shim's always are); a page the workload touches first is loaded first.
		err = c.runsc.Restore(ctx, c.id, runsc.RestoreOpts{ImagePath: imageDir, IO: io, Background: true})
	}
	if err != nil {
		return err
	}
	if !c.sandbox && c.init.io.consoleSocket() == "" {
		return c.init.io.afterStart(ctx)
	}
	return nil
}

// running watches a container runsc has just started or restored: its exit, and for a
// sandbox that may checkpoint, the workload's checkpoints.
func (s *Service) running(c *container) {
	go s.waitInit(c)
	go s.watchOOM(c)
	if c.snap != nil && c.snap.workloadTrigger && c.snap.restore == nil {
		go s.watchCheckpoints(c)
	}
}

// touchLater records, in the background, that a restore used the snapshot.
func (ps *podSnap) touchLater(ctx context.Context) {
	m := ps.restore
	go func() {
		tctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := ps.repo.Touch(tctx, m); err != nil {
			log.G(ctx).WithError(err).Warn("could not record the snapshot's last access time")
		}
	}()
}

// recreate replaces a created (or half-restored) sandbox with a fresh `runsc create`
// from the same bundle, for a cold start.
func (s *Service) recreate(ctx context.Context, c *container) error {
	if err := c.runsc.Delete(context.WithoutCancel(ctx), c.id, runsc.DeleteOpts{Force: true}); err != nil && !runsc.IsNotExist(err) {
		return fmt.Errorf("tear down sandbox %s after a failed restore: %w", c.id, err)
	}
	if c.snap != nil && c.snap.entry.Policy.Spec.TriggerConfig.Type == v1.TriggerWorkload {
		if err := s.enableWorkloadTrigger(c, c.snap); err != nil {
			log.G(ctx).WithError(err).Warn("workload trigger not enabled")
		}
	}
	c.init.io.close()
	return s.runscCreate(ctx, c)
}

// watchCheckpoints waits for the workload's checkpoint and commits it to storage.
//
// runsc opens the image files once, when the sandbox is created, and every checkpoint of
// the sandbox writes into those same files. So the shim commits the first successful
// checkpoint straight from the checkpoint directory and then stops watching: a later
// trigger still saves (the workload reads its result as usual) but is not uploaded. A
// failed save (`runsc wait --checkpoint` returns its error while the sandbox keeps
// running; the workload reads "error") is logged, uploads nothing, and the watch goes on.
func (s *Service) watchCheckpoints(c *container) {
	ps := c.snap
	for {
		_, err := c.runsc.Wait(context.Background(), c.id, runsc.WaitOpts{Checkpoint: true})
		if err != nil && !ps.savedBeforeStop(c) {
			// The wait also fails when the sandbox goes away; its exit follows shortly.
			select {
			case <-ps.sandboxGone:
				return
			case <-time.After(time.Second):
			}
			log.G(s.ctx).WithError(err).WithFields(log.Fields{"id": c.id, "reason": v1.EventReason}).
				Warn("podsnapshot: checkpoint failed: the workload read \"error\" and keeps running; nothing uploaded")
			time.Sleep(100 * time.Millisecond)
			continue
		}
		ps.busy.Lock()
		if ps.stop {
			ps.tookCheckpoint.Store(true)
		}
		_, err = s.commit(c, ps.checkpointDir)
		ps.busy.Unlock()
		if ps.stop {
			ps.result <- err
		}
		return
	}
}

// savedBeforeStop tells, after `runsc wait --checkpoint` failed, whether it failed only
// because a postCheckpoint: stop checkpoint succeeded and the sandbox then exited before
// the wait could be answered: the sandbox is gone within a few seconds and the image is
// not empty. A failed save leaves the sandbox running.
func (ps *podSnap) savedBeforeStop(c *container) bool {
	if !ps.stop {
		return false
	}
	select {
	case <-ps.sandboxGone:
	case <-time.After(3 * time.Second):
		return false
	}
	return ps.imageWritten()
}

// commit uploads a checkpoint image directory as a new snapshot of the pod; the
// directory is removed only after the manifest is stored.
func (s *Service) commit(c *container, dir string) (*manifest.Manifest, error) {
	ps := c.snap
	ctx, cancel := context.WithCancel(context.Background())
	ps.cancelMu.Lock()
	if ps.abandoned != 0 {
		ps.cancelMu.Unlock()
		cancel()
		log.G(s.ctx).WithFields(log.Fields{"id": c.id, "reason": v1.EventReason}).Warn("podsnapshot: checkpoint not committed: the task was killed or deleted")
		return nil, errAbandoned
	}
	ps.cancel = cancel
	ps.commits.Add(1)
	ps.cancelMu.Unlock()
	defer ps.commits.Done()
	defer func() {
		ps.cancelMu.Lock()
		ps.cancel = nil
		ps.cancelMu.Unlock()
		cancel()
	}()
	t0 := time.Now()
	key, members, infos, err := ps.podKey()
	if err != nil {
		log.G(s.ctx).WithError(err).WithFields(log.Fields{"id": c.id, "reason": v1.EventReason}).Error("podsnapshot: checkpoint not committed")
		return nil, err
	}
	m := manifest.New(ps.namespace, ps.policyName(), key, ps.tuple, t0)
	if len(members) > 0 {
		m.SandboxKey = ps.sandboxKey
		m.Containers = members
	}
	m.Labels = ps.labels
	m.GroupLabels = snapkey.GroupValues(ps.entry.Policy.GroupLabels(), ps.labels)
	m.Source = ps.source
	m.Source.Containers = append(m.Source.Containers[:1:1], infos...)
	if err := ps.repo.Commit(ctx, m, dir); err != nil {
		log.G(s.ctx).WithError(err).WithFields(log.Fields{"id": c.id, "reason": v1.EventReason}).Error("podsnapshot: checkpoint not committed")
		return nil, err
	}
	if err := os.RemoveAll(dir); err != nil {
		log.G(s.ctx).WithError(err).Warn("remove uploaded checkpoint image")
	}
	var raw, stored int64
	for _, f := range m.Files {
		raw += f.RawSize
		stored += f.StoredSize
	}
	log.G(s.ctx).WithFields(log.Fields{"id": c.id, "reason": v1.EventReason, "snapshot": m.UUID,
		"raw_bytes": raw, "stored_bytes": stored, "upload_ms": time.Since(t0).Milliseconds()}).
		Infof("podsnapshot: committed: Successfully checkpointed the pod to PodSnapshot %s/%s", m.Namespace, m.UUID)
	s.enforceGroupLimit(ctx, ps)
	return m, nil
}

// podKey returns the key of the whole pod (the sandbox and every container that joined
// it) and the record of the joined containers for the manifest. A container whose key
// could not be computed fails it: a snapshot that could never be matched is not stored.
func (ps *podSnap) podKey() (string, []manifest.ContainerKey, []manifest.ContainerInfo, error) {
	ps.membersMu.Lock()
	members := append([]*container(nil), ps.members...)
	ps.membersMu.Unlock()
	in := snapkey.Input{
		Namespace:   ps.namespace,
		Policy:      ps.policyName(),
		GroupLabels: ps.entry.Policy.GroupLabels(),
		PodLabels:   ps.labels,
		Containers:  []snapkey.Container{ps.sandbox},
	}
	var keys []manifest.ContainerKey
	var infos []manifest.ContainerInfo
	for _, c := range members {
		if c.keyErr != nil {
			return "", nil, nil, fmt.Errorf("container %s: %w", c.id, c.keyErr)
		}
		in.Containers = append(in.Containers, snapkey.Container{Name: c.name, Image: c.image, ImageDigest: c.imageDigest, Spec: c.spec})
		keys = append(keys, manifest.ContainerKey{Name: c.name, Key: c.key})
		infos = append(infos, manifest.ContainerInfo{Name: c.name, ID: c.id, Image: c.image, ImageDigest: c.imageDigest})
	}
	key, err := snapkey.Compute(in)
	if err != nil {
		return "", nil, nil, fmt.Errorf("snapshot key: %w", err)
	}
	return key, keys, infos, nil
}

// describeMember fills in the name, image and snapshot key of container c joining the
// sandbox of ps (c.keyErr when the key cannot be computed).
func (s *Service) describeMember(ctx context.Context, c *container) {
	c.name = c.spec.Annotations[oci.ContainerNameAnnotation]
	if c.name == "" {
		c.name = c.id
	}
	rec, err := lookupContainer(ctx, s.address, s.namespace, c.id)
	if err != nil {
		c.keyErr = fmt.Errorf("cannot read the container's image: %w", err)
		return
	}
	c.image, c.imageDigest = rec.Image, rec.ImageDigest
	if c.image == "" {
		c.image = c.spec.Annotations[oci.ImageNameAnnotation]
	}
	c.key, c.keyErr = snapkey.ContainerKey(snapkey.Container{Name: c.name, Image: c.image, ImageDigest: c.imageDigest, Spec: c.spec})
}

// addMember records c as a container of the pod; removeMember forgets it.
func (ps *podSnap) addMember(c *container) {
	ps.membersMu.Lock()
	ps.members = append(ps.members, c)
	ps.membersMu.Unlock()
}

func (ps *podSnap) removeMember(c *container) {
	ps.membersMu.Lock()
	defer ps.membersMu.Unlock()
	for i, m := range ps.members {
		if m == c {
			ps.members = append(ps.members[:i], ps.members[i+1:]...)
			return
		}
	}
}

// enforceGroupLimit deletes the oldest snapshots of each group beyond the policy's
// maxSnapshotCountPerGroup.
func (s *Service) enforceGroupLimit(ctx context.Context, ps *podSnap) {
	rules, err := ps.entry.Policy.RetentionRules()
	if err != nil || rules.MaxPerGroup <= 0 {
		return
	}
	ms, _, err := ps.repo.List(ctx, ps.namespace)
	if err != nil {
		log.G(ctx).WithError(err).Warn("retention: list snapshots")
		return
	}
	byID := map[string]*manifest.Manifest{}
	var snaps []retention.Snapshot
	for _, m := range ms {
		if m.Policy == ps.policyName() && m.State == manifest.StateCommitted {
			byID[m.UUID] = m
			snaps = append(snaps, m.RetentionSnapshot())
		}
	}
	for _, d := range retention.OverGroupLimit(snaps, rules.MaxPerGroup) {
		if err := ps.repo.Delete(ctx, byID[d.ID]); err != nil {
			log.G(ctx).WithError(err).Warnf("retention: delete snapshot %s", d.ID)
			continue
		}
		log.G(ctx).Infof("podsnapshot: retention: deleted snapshot %s/%s: %s", ps.namespace, d.ID, d.Reason)
	}
}

// checkpointNow takes a snapshot of the sandbox on request (containerd's Checkpoint
// call, `podsnapshot checkpoint`): `runsc checkpoint`, then commit.
func (s *Service) checkpointNow(ctx context.Context, c *container) (*manifest.Manifest, error) {
	ps := c.snap
	if !ps.busy.TryLock() {
		return nil, fmt.Errorf("a checkpoint of sandbox %s is already in progress", c.id)
	}
	defer ps.busy.Unlock()
	dir := filepath.Join(ps.workDir, "manual-"+time.Now().UTC().Format("20060102T150405.000000000"))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if ps.stop {
		ps.tookCheckpoint.Store(true)
	}
	err := c.runsc.Checkpoint(ctx, c.id, runsc.CheckpointOpts{ImagePath: dir, LeaveRunning: !ps.stop, Compression: "none"})
	if err != nil {
		ps.tookCheckpoint.Store(false)
		os.RemoveAll(dir)
		return nil, err
	}
	m, err := s.commit(c, dir)
	if ps.stop {
		ps.result <- err
	}
	return m, err
}

// stoppedByCheckpoint is called when a sandbox's init exited: if a checkpoint with
// postCheckpoint: stop ended it, it waits for that snapshot's commit and returns the
// task's exit status: 0 once committed, 1 if the commit failed.
func (ps *podSnap) stoppedByCheckpoint(c *container) (int, bool) {
	if ps == nil {
		return 0, false
	}
	ps.sandboxGoneOnce.Do(func() { close(ps.sandboxGone) })
	if !ps.stop {
		return 0, false
	}
	if !ps.tookCheckpoint.Load() && !ps.imageWritten() {
		return 0, false
	}
	// Either a commit is under way (result follows), or the watcher is about to decide
	// that the image it finds was saved before the stop.
	var err error
	select {
	case err = <-ps.result:
	case <-time.After(10 * time.Second):
		if !ps.tookCheckpoint.Load() {
			return 0, false
		}
		err = <-ps.result
	}
	if sig := ps.abandonedBy(); sig != 0 {
		return 128 + sig, true // killed while it saved or uploaded: as any killed task
	}
	if err != nil {
		return 1, true
	}
	return 0, true
}

// imageWritten reports whether the workload-trigger image holds a saved checkpoint.
func (ps *podSnap) imageWritten() bool {
	if ps.checkpointDir == "" {
		return false
	}
	fi, err := os.Stat(filepath.Join(ps.checkpointDir, "checkpoint.img"))
	return err == nil && fi.Size() > 0
}

// errAbandoned is the commit result of a snapshot given up because its task was killed
// or deleted.
var errAbandoned = errors.New("snapshot abandoned: the task was killed or deleted")

// abandon cancels the commit in progress, if any, and any commit not yet started;
// signal is what ended the task (recorded for a stop-mode task's exit status).
func (ps *podSnap) abandon(signal int) {
	ps.cancelMu.Lock()
	defer ps.cancelMu.Unlock()
	if ps.abandoned == 0 {
		ps.abandoned = signal
	}
	if ps.cancel != nil {
		ps.cancel()
	}
}

// abandonedBy returns the signal that abandoned the snapshot, 0 if none did.
func (ps *podSnap) abandonedBy() int {
	ps.cancelMu.Lock()
	defer ps.cancelMu.Unlock()
	return ps.abandoned
}

// waitCommits waits up to timeout for aborted commits to finish deleting what they had
// uploaded, so that a deleted sandbox leaves no orphaned objects in storage.
func (ps *podSnap) waitCommits(timeout time.Duration) {
	done := make(chan struct{})
	go func() { ps.commits.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		log.L.Warnf("podsnapshot: an aborted upload is still cleaning up after %s; leaving it", timeout)
	}
}

// cleanup removes the sandbox's work dir (checkpoint images not committed are kept
// until here: nothing local is deleted before storage has it or the pod is gone).
func (ps *podSnap) cleanup() {
	if ps != nil {
		done := ps.stopDownload()
		os.RemoveAll(ps.workDir)
		if done && ps.ownRestoreDir {
			os.RemoveAll(ps.restoreDir)
		}
	}
}

// runscIdentity names the runsc build for the compatibility tuple: its version line and,
// when the build carries no version (VERSION_MISSING, as `go build` leaves it), the
// sha256 of the binary, so that two different builds never pass for one another.
// Hashing a 100 MB binary costs more than half a second, and every pod has a shim of its
// own, so the result is kept in cacheFile, keyed by the binary's path, inode, size and
// modification time.
func runscIdentity(ctx context.Context, r *runsc.Runsc, cacheFile string) (string, error) {
	path, err := exec.LookPath(r.Path)
	if err != nil {
		return "", fmt.Errorf("runsc binary %s: %w", r.Path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("runsc binary: %w", err)
	}
	stamp := fmt.Sprintf("%s ino=%d size=%d mtime=%d", path, inode(fi), fi.Size(), fi.ModTime().UnixNano())
	if data, err := os.ReadFile(cacheFile); err == nil {
		if cachedStamp, identity, ok := strings.Cut(string(data), "\n"); ok && cachedStamp == stamp && identity != "" {
			return identity, nil
		}
	}
	identity, err := r.Version(ctx)
	if err != nil {
		return "", err
	}
	if strings.Contains(identity, "VERSION_MISSING") {
		f, err := os.Open(path)
		if err != nil {
			return "", fmt.Errorf("runsc binary: %w", err)
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return "", fmt.Errorf("runsc binary %s: %w", path, err)
		}
		identity = fmt.Sprintf("%s+sha256:%x", identity, h.Sum(nil)[:8])
	}
	// Best effort, written atomically: a missing cache only costs time.
	if err := os.MkdirAll(filepath.Dir(cacheFile), 0o700); err == nil {
		tmp := fmt.Sprintf("%s.%d", cacheFile, os.Getpid())
		if os.WriteFile(tmp, []byte(stamp+"\n"+identity), 0o600) == nil {
			_ = os.Rename(tmp, cacheFile)
		}
	}
	return identity, nil
}

func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
