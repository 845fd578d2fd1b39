// Package podsnap owns the snapshot lifecycle of one pod: the plan at the sandbox's
// Create (policy, snapshot key, lookup, background fetch), restore or cold start at
// Start, the deferred restore of a pod of several containers, the workload and manual
// checkpoint triggers, the commit to storage, postCheckpoint stop, cleanup, and the
// reports of each step to the node agent (report.go).
//
// The task service (package shim) calls it through a few hooks — Node.Plan at the
// sandbox's Create, Pod.Join at a container's Create, Pod.Start, Pod.Kill, Pod.Delete,
// Pod.Checkpoint, Pod.SandboxExited — and otherwise knows nothing of snapshots. The
// lifecycle drives runsc only through the Task interface. docs/architecture.md has the
// data flow and the lock order.
package podsnap

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/policy"
	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/checkpoint/snapkey"
	"github.com/podsnapshot/podsnapshot/internal/config"
	"github.com/podsnapshot/podsnapshot/internal/report"
	"github.com/podsnapshot/podsnapshot/internal/workdir"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
	"github.com/podsnapshot/podsnapshot/storage"
)

// PSNameAnnotation names the snapshot (its UUID) to restore from, instead of the newest.
const PSNameAnnotation = "podsnapshot.gke.io/ps-name"

// unknownAnnotations returns the podsnapshot.gke.io annotations other than
// PSNameAnnotation, sorted.
func unknownAnnotations(annotations map[string]string) []string {
	var out []string
	for k := range annotations {
		if strings.HasPrefix(k, "podsnapshot.gke.io/") && k != PSNameAnnotation {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// uploadCodec compresses snapshots on their way to storage. One encoder goroutine keeps
// the shim near 20 MiB during an upload (parallel zstd held about 200 MiB on a 2-core
// node) at about the same throughput on memory images, which are mostly copying.
var uploadCodec = storage.Zstd{Concurrency: 1}

// minUploadRatio is the zstd ratio on a sample of an image file below which the file is
// stored uncompressed (repo.Repo.MinRatio): under 20% saved, compression costs about 2-3
// CPU seconds per GB on upload and a decompression per frame on restore, on the cores
// the restored sandbox loads its pages with, for little less to store; and a compressed
// file cannot be hard-linked from a local store, adopted whole or read with --direct.
// 1.25, not 1.1: model weights, the bulk of an inference server's memory, compress about
// 1.05-1.2 (the torch server's image 1.09, docs/benchmarks.md), and a threshold inside
// that band turned the codec of the same image into a coin toss on its sample (issue 26:
// one run of two stored it raw and restored in 1.2 s, the other compressed in 3.7 s).
const minUploadRatio = 1.25

// MinUploadRatio is minUploadRatio, for reports.
const MinUploadRatio = minUploadRatio

// commitRepo is the repository the shim commits to and restores from on store st:
// uploadCodec, minUploadRatio, and hot frames as the config says.
func commitRepo(st storage.Store, hotFrames bool) *repo.Repo {
	return &repo.Repo{Store: st, Codec: uploadCodec, MinRatio: minUploadRatio, HotFrames: hotFrames}
}

// CommitRepo is the repository a shim commits snapshots to on store st, with the shim's
// codec and ratio threshold (no hot frames: it restores nothing). The benchmark's
// upload-alone floor uses it, so that the floor uploads as the shim does.
func CommitRepo(st storage.Store) *repo.Repo { return commitRepo(st, false) }

// StoreOptions are the options the shim opens every store with: 8 MiB parts and read
// chunks; with 4 in flight a transfer holds about 40 MiB, which keeps the shim's memory
// well under 100 MiB whatever the snapshot size.
func StoreOptions() []storage.Option {
	return []storage.Option{storage.WithPartSize(8 << 20), storage.WithReadChunkSize(8 << 20)}
}

// criSandboxName is the name a CRI pod's sandbox (pause) container is recorded under: it
// has no name of its own. "POD" (the kubelet's old name for it) is no valid container
// name, so it never collides with a container of the pod, which may well be called
// "main".
const criSandboxName = "POD"

// lookupTimeout bounds how long an unreachable store can delay Create before the pod
// starts cold (at most 5 s added, README "A snapshot problem never fails a pod").
const lookupTimeout = 4 * time.Second

// Pod is the snapshot lifecycle of one sandbox matched by a PodSnapshotPolicy. A nil
// *Pod is a pod no policy matched: every hook is then a no-op.
//
// Lock order: deferredRestore.mu, then Pod.mu or Pod.membersMu or Pod.cancelMu (each
// held briefly, never two at once); busy is held across a checkpoint and its commit and
// taken under none of them.
type Pod struct {
	node      *Node
	cfg       config.Config
	sb        Task   // the sandbox (root) container
	namespace string // the pod's namespace (policy namespace)
	entry     *policy.Entry
	repo      *repo.Repo
	nodeCache *cache.Cache
	// sandboxKey is the key of the sandbox container alone, which a new pod's snapshot is
	// looked up by (manifest.IndexKey); sandbox is that container as the key saw it.
	sandboxKey string
	sandbox    snapkey.Container
	tuple      compat.Tuple
	labels     map[string]string
	source     manifest.Source
	workDir    string // <work_dir>/<containerd namespace>/<sandbox id>: this pod's alone
	// owner holds workDir's owner lock while the pod lives (nil when it could not be
	// taken): a shim that dies leaves it to workdir.Sweep.
	owner *workdir.Dir
	stop  bool // postCheckpoint: stop
	// lookupStart is when the snapshot lookup began, at the sandbox's Create.
	lookupStart time.Time
	// layerNamed: the sandbox container's spec names its downloaded root file system
	// layer itself, not a placeholder (rootfs.go planRootfs); set at Plan.
	layerNamed bool
	// rep writes the pod's reports for the node agent (report.go); nil for a pod
	// without a Kubernetes name (ctr).
	rep *reporter

	// mu guards restore, fetch, workloadTrigger, checkpointDir and reserved.
	mu sync.Mutex
	// restore is the snapshot the pod restores from at Start; nil for a cold start.
	restore *manifest.Manifest
	// fetch brings restore onto the node; nil when restore is nil.
	fetch *fetch
	// workloadTrigger: the workload may checkpoint itself into checkpointDir.
	workloadTrigger bool
	checkpointDir   string
	// reserved is the UUID the next checkpoint is committed under, reported with the
	// cold start before that checkpoint exists (report.go); "" when none is reserved.
	reserved string

	// deferred is the restore of a snapshot of several containers, set at the sandbox's
	// Start (deferred.go) and read by the hooks of its containers.
	deferred atomic.Pointer[deferredRestore]

	// membersMu guards members: the containers that joined the sandbox, in order, which
	// a checkpoint records with the sandbox.
	membersMu sync.Mutex
	members   []*member

	// busy allows one checkpoint of the pod at a time.
	busy sync.Mutex
	// tookCheckpoint is set once a checkpoint that stops the sandbox has been taken;
	// result then receives that snapshot's commit result, once.
	tookCheckpoint atomic.Bool
	result         chan error
	// sandboxGone is closed when the sandbox's init has exited.
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
	// touches counts access-time updates in flight (logRestored).
	touches sync.WaitGroup
}

// Sandbox is what Plan needs of a sandbox container being created.
type Sandbox struct {
	Task Task
	// Spec is the container's OCI spec as containerd gave it (the key is computed from it).
	Spec *specs.Spec
	// Config is the node config the task was created with.
	Config config.Config
	// KeepVolumes, when not nil, moves the pod's volumes whose files a whole-pod snapshot
	// holds (emptyDir) inside the sandbox, changing Spec and the bundle's config.json. Plan
	// calls it once a policy of scope whole-pod matched, before the snapshot key is
	// computed from Spec; it returns the volumes it moved.
	KeepVolumes func(ctx context.Context) ([]string, error)
}

func (p *Pod) policyName() string { return p.entry.Policy.Name }

// decide logs the one line per pod that says what happened to it and why.
func decide(ctx context.Context, id, decision, why string) {
	log.G(ctx).WithFields(log.Fields{"id": id, "decision": decision}).Infof("podsnapshot: %s: %s", decision, why)
}

// Plan decides, at Create of a sandbox and before `runsc create`, whether the pod
// restores from a snapshot, may checkpoint, or is a plain runsc pod (nil). It never
// fails: whatever goes wrong is a cold start with the reason logged. It may rewrite the
// bundle's config.json (the workload trigger's annotations).
func (n *Node) Plan(ctx context.Context, sb Sandbox) *Pod {
	start := time.Now()
	id, spec, cfg := sb.Task.ID(), sb.Spec, sb.Config
	ns := spec.Annotations[oci.SandboxNamespaceAnnotation]
	if ns == "" {
		ns = n.Namespace
	}
	loader := n.loader(cfg.PolicyDir)
	if !hasPolicyIn(loader.Current(), ns) {
		// The common case on a node: no policy could match, so containerd is not asked
		// for the labels.
		decide(ctx, id, "plain runsc", fmt.Sprintf("no PodSnapshotPolicy in namespace %s (policy dir %s)", ns, loader.Dir()))
		return nil
	}
	rec, err := n.Lookup(ctx, id)
	if err != nil {
		decide(ctx, id, "cold start", fmt.Sprintf("cannot read the container's labels: %v", err))
		return nil
	}
	match := loader.Match(ns, rec.Labels) // logs a warning of its own
	if !match.Found() {
		decide(ctx, id, "plain runsc", fmt.Sprintf("no PodSnapshotPolicy in namespace %s matches labels %v (policy dir %s)", ns, rec.Labels, loader.Dir()))
		return nil
	}
	entry := match.Entry
	rep := newReporter(cfg, spec, ns, id, entry.Policy.Name, scopeOf(entry.Policy.Spec.SnapshotScope))
	// coldWithout starts the matched pod cold without a lifecycle: it cannot checkpoint.
	coldWithout := func(reason, why string) *Pod {
		decide(ctx, id, "cold start", why)
		rep.write(ctx, report.Report{Kind: report.ColdStart, Reason: reason, Message: why})
		return nil
	}
	tuple, err := n.tuple(ctx, cfg)
	if err != nil {
		return coldWithout(report.ReasonOther, fmt.Sprintf("policy %s: %v", entry.ID(), err))
	}
	st, err := n.storeOf(ctx, cfg, entry, spec)
	if err != nil {
		return coldWithout(report.ReasonStorageUnreachable, fmt.Sprintf("policy %s: %v", entry.ID(), err))
	}
	// Only a pod that may checkpoint pays for in-sandbox volumes; they change the key.
	if sb.KeepVolumes != nil && scopeOf(entry.Policy.Spec.SnapshotScope) == manifest.ScopeWholePod {
		keepVolumes(ctx, id, sb.KeepVolumes)
	}
	image := rec.Image
	if image == "" {
		image = spec.Annotations[oci.ImageNameAnnotation]
	}
	name := spec.Annotations[oci.ContainerNameAnnotation]
	switch {
	case name != "":
	case spec.Annotations[oci.SandboxNameAnnotation] != "":
		name = criSandboxName
	default:
		name = "main" // a container run without Kubernetes (ctr)
	}
	sandbox := snapkey.Container{Name: name, Image: image, ImageDigest: rec.ImageDigest, Spec: spec, Sandbox: true}
	key, err := snapkey.Compute(snapkey.Input{
		Namespace:   ns,
		Policy:      entry.Policy.Name,
		GroupLabels: entry.Policy.GroupLabels(),
		PodLabels:   rec.Labels,
		Containers:  []snapkey.Container{sandbox},
	})
	if err != nil {
		return coldWithout(report.ReasonOther, fmt.Sprintf("policy %s: snapshot key: %v", entry.ID(), err))
	}
	p := &Pod{
		node:        n,
		cfg:         cfg,
		sb:          sb.Task,
		namespace:   ns,
		entry:       entry,
		repo:        commitRepo(st, cfg.HotFrames),
		nodeCache:   &cache.Cache{Dir: cfg.Cache(), MaxBytes: cfg.CacheMaxBytes},
		sandboxKey:  key,
		sandbox:     sandbox,
		tuple:       tuple,
		labels:      rec.Labels,
		workDir:     filepath.Join(cfg.WorkDir, n.Namespace, id),
		rep:         rep,
		stop:        entry.Policy.Spec.TriggerConfig.PostCheckpoint == v1.PostCheckpointStop,
		result:      make(chan error, 1),
		sandboxGone: make(chan struct{}),
		source: manifest.Source{
			Node:      n.hostname(),
			Pod:       spec.Annotations[oci.SandboxNameAnnotation],
			SandboxID: id,
			Containers: []manifest.ContainerInfo{{
				Name: name, ID: id, Image: image, ImageDigest: rec.ImageDigest, Sandbox: true,
			}},
		},
	}

	n.sweepOnce(cfg.WorkDir)
	if p.owner, err = workdir.Claim(p.workDir); err != nil {
		log.G(ctx).WithError(err).WithField("id", id).Warn("podsnapshot: the pod's work dir is not locked: should this shim die, only a manual removal cleans it")
	}
	if unknown := unknownAnnotations(spec.Annotations); len(unknown) > 0 {
		// A typo of ps-name would otherwise restore the newest snapshot without a word.
		log.G(ctx).WithField("id", id).Warnf("podsnapshot: ignoring annotation %s: the only podsnapshot.gke.io annotation is %s",
			strings.Join(unknown, ", "), PSNameAnnotation)
	}
	why, reason, restores := p.find(ctx, spec.Annotations[PSNameAnnotation])
	if restores {
		if p.restore.RootfsOnly() {
			p.planRootfs(p.restore, p.fetch)
		}
		if p.fetch.cached {
			decide(ctx, id, "restore", why)
		} else {
			// The decision waits for the download: Start says it.
			log.G(ctx).WithField("id", id).Infof("podsnapshot: %s", why)
		}
		return p
	}
	if p.workloadTriggered() {
		if err := p.enableWorkloadTrigger(); err != nil {
			why = fmt.Sprintf("%s; policy %s: workload trigger not enabled: %v", why, entry.ID(), err)
			decide(ctx, id, "cold start", why)
			p.reportColdStart(ctx, reason, why)
			return p
		}
	}
	why = fmt.Sprintf("%s (policy %s, %s trigger, lookup %d ms)",
		why, entry.ID(), entry.Policy.Spec.TriggerConfig.Type, time.Since(start).Milliseconds())
	decide(ctx, id, "cold start", why)
	p.reportColdStart(ctx, reason, why)
	return p
}

// keepVolumes runs a sandbox's KeepVolumes and logs what it did. A volume it could not move
// stays a host directory, outside the pod's snapshots; the key says so (the mount hints are
// part of it), so such a pod never restores a snapshot that held the volume.
func keepVolumes(ctx context.Context, id string, keep func(context.Context) ([]string, error)) {
	moved, err := keep(ctx)
	switch {
	case err != nil:
		log.G(ctx).WithError(err).WithField("id", id).Warn("podsnapshot: emptyDir volumes left host directories, outside the pod's snapshots")
	case len(moved) > 0:
		log.G(ctx).WithField("id", id).Infof("podsnapshot: emptyDir volumes %s inside the sandbox, saved with the pod", strings.Join(moved, ", "))
	}
}

func hasPolicyIn(set *policy.Set, namespace string) bool {
	for _, e := range set.Policies {
		if e.Policy.Namespace == namespace {
			return true
		}
	}
	return false
}

// workloadTriggered reports whether the pod's policy lets the workload trigger its
// checkpoint (trigger type workload).
func (p *Pod) workloadTriggered() bool {
	return p.entry.Policy.Spec.TriggerConfig.Type == v1.TriggerWorkload
}

// Stops reports whether the pod's policy stops it after a checkpoint (postCheckpoint:
// stop); set at Plan, never changed.
func (p *Pod) Stops() bool { return p != nil && p.stop }

// Restores reports whether the pod's sandbox is to restore from a snapshot at Start
// (`runsc restore`); a pod on a rootfs-only snapshot's layers starts.
func (p *Pod) Restores() bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.restore != nil && !p.restore.RootfsOnly()
}

// restoring returns the snapshot the pod restores from and its fetch; nil, nil for a
// cold start.
func (p *Pod) restoring() (*manifest.Manifest, *fetch) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.restore, p.fetch
}
