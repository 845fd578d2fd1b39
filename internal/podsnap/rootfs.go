package podsnap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containerd/log"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/internal/report"
)

// A rootfs-only snapshot (policy spec.snapshotScope: rootfs-only) holds each container's
// root file system changes and no memory: the upper layer of gVisor's rootfs overlay,
// saved with `runsc tar rootfs-upper` and applied to a new container of the same name by
// gVisor itself through the AnnRootfsUpperTar annotation, before its processes start.
// The restored pod starts cold on those files.
//
// Why tar and not gVisor's `runsc fscheckpoint`: the pinned runsc has both, and both
// brought a container's files back here. fscheckpoint is marked experimental, saves the
// whole sandbox into gVisor's own multi-file format, and restores only at the sandbox's
// `runsc create --fs-restore-image-path` (runsc refuses it for a container joining an
// existing sandbox, which is how CRI creates a pod's containers). The tar layer is per
// container, applied at that container's create or start, and is a plain tar archive
// (deletions are overlayfs whiteouts) that `tar tvf` can read.

// rootfsOnly reports whether the pod's policy snapshots root file systems only.
func (p *Pod) rootfsOnly() bool {
	return p.entry.Policy.Spec.SnapshotScope == v1.ScopeRootfsOnly
}

// scope is the manifest scope of the pod's snapshots.
func (p *Pod) scope() string { return scopeOf(p.entry.Policy.Spec.SnapshotScope) }

// scopeOf is the manifest scope of a policy's snapshotScope (whole-pod when unset).
func scopeOf(s v1.SnapshotScope) string {
	if s == v1.ScopeRootfsOnly {
		return manifest.ScopeRootfsOnly
	}
	return manifest.ScopeWholePod
}

// layerTask is a container whose root file system a rootfs-only snapshot saves.
type layerTask struct {
	t    Task
	name string
}

// layerTasks returns the containers of the pod that have a root file system of their
// own to save: the sandbox container unless it is a CRI pod's pause container (gVisor
// applies a layer only to a named container of a pod of several), and each member.
func (p *Pod) layerTasks() []layerTask {
	var out []layerTask
	if p.sandbox.Name != criSandboxName {
		out = append(out, layerTask{p.sb, p.sandbox.Name})
	}
	for _, m := range p.currentMembers() {
		if !m.t.Exited() {
			out = append(out, layerTask{m.t, m.name})
		}
	}
	return out
}

// saveRootfs writes the root file system layer of each container of the pod into dir
// (repo.RootfsLocal names), with the sandbox frozen so that the layers are of one
// moment. Afterwards the sandbox runs on, or, with stop (postCheckpoint: stop), is
// killed: it ends as a stopped whole-pod checkpoint ends it.
func (p *Pod) saveRootfs(ctx context.Context, dir string, stop bool) (err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("root file system snapshot directory: %w", err)
	}
	tasks := p.layerTasks()
	if len(tasks) == 0 {
		return errors.New("the pod has no container with a root file system of its own to save")
	}
	if err := p.sb.Freeze(ctx); err != nil {
		return fmt.Errorf("pause sandbox %s: %w", p.sb.ID(), err)
	}
	defer func() {
		// However the caller's context ends, the sandbox must not stay paused.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if terr := p.sb.Thaw(ctx); terr != nil {
			log.G(ctx).WithError(terr).Warn("podsnapshot: could not resume the sandbox after its root file system snapshot")
		}
		if stop && err == nil {
			// The layers are saved: the pod stops as postCheckpoint: stop says. runsc
			// signals no paused sandbox, so the kill follows the resume (its workload
			// may run for the few milliseconds between; the layers are as paused).
			if kerr := p.sb.Kill(ctx, 9); kerr != nil {
				log.G(ctx).WithError(kerr).Warn("podsnapshot: could not stop the sandbox after its root file system snapshot")
			}
		}
	}()
	for _, lt := range tasks {
		if !validLayerName(lt.name) {
			return fmt.Errorf("container name %q cannot name a layer file", lt.name)
		}
		if err := lt.t.TarRootfs(ctx, filepath.Join(dir, repo.RootfsLocal(lt.name))); err != nil {
			return fmt.Errorf("container %s: %w", lt.name, err)
		}
	}
	return nil
}

// commitRootfsAfterTrigger saves and commits the layers once the workload's trigger
// completed: gVisor's /proc/gvisor/checkpoint always saves the whole sandbox, so its
// memory image (in imageDir) is discarded and the layers are read from the running
// sandbox. The trigger's annotations keep the sandbox running after gVisor's save
// (the resume annotation), so that its files can be read; postCheckpoint: stop then ends
// it here. When the layers cannot be saved, the sandbox runs on, as after a failed
// whole-pod save (the workload has read `resume`: gVisor's own save succeeded), the
// failure is reported and logged, and errLayersNotSaved is returned.
func (p *Pod) commitRootfsAfterTrigger(ctx context.Context, uuid, imageDir string, t0 time.Time) error {
	discardImage(imageDir, true)
	dir := filepath.Join(p.workDir, "rootfs-"+t0.UTC().Format("20060102T150405.000000000"))
	if err := p.saveRootfs(ctx, dir, p.stop); err != nil {
		os.RemoveAll(dir)
		err = fmt.Errorf("%w: %w", errLayersNotSaved, err)
		log.L.WithError(err).WithFields(log.Fields{"id": p.sb.ID(), "reason": v1.EventReason, "snapshot": uuid}).
			Error("podsnapshot: checkpoint not committed; the pod runs on")
		p.reportCheckpointFailed(ctx, uuid, err.Error())
		return err
	}
	_, err := p.commit(uuid, dir, t0)
	return err
}

// errLayersNotSaved wraps the error of a rootfs-only checkpoint whose layers could not
// be read from the sandbox: nothing was stored and the sandbox was not stopped.
var errLayersNotSaved = errors.New("root file system snapshot not taken")

// namedLayerAnnotation is the annotation naming the layer of container name in a pod of
// several (a spec with a CRI container name); gVisor reads the plain AnnRootfsUpperTar
// for a container without one (runsc/specutils: RootfsTarUpperPath).
func namedLayerAnnotation(name string) string { return AnnRootfsUpperTar + "." + name }

// layerFile returns the fetched layer of container name in the fetch's directory, and
// whether the snapshot has one for it.
func layerFile(m *manifest.Manifest, f *fetch, name string) (string, bool) {
	if f == nil || f.dir == "" {
		return "", false
	}
	if _, ok := m.RootfsLayers()[name]; !ok {
		return "", false
	}
	return filepath.Join(f.dir, repo.RootfsLocal(name)), true
}

// startOnLayers runs the created sandbox of a pod that restores a rootfs-only snapshot:
// it waits for the download, gives the sandbox container its layer (applySandboxLayer)
// and starts it. A failed download is a cold start on the empty placeholder Plan gave
// it; a failed start, a cold start of a sandbox made afresh without a layer.
func (p *Pod) startOnLayers(ctx context.Context, m *manifest.Manifest, f *fetch) error {
	id := p.sb.ID()
	if p.sandbox.Name == criSandboxName {
		// A CRI pause container has no layer: it starts now, and each container waits
		// for its own layer as it starts (startMemberOnLayer, restore_wait_seconds).
		decide(ctx, id, "restore", fmt.Sprintf("snapshot %s/%s (policy %s, scope %s): the pod's containers start on their root file system layers",
			p.namespace, m.UUID, p.entry.ID(), m.ScopeName()))
		return p.launch(ctx, p.sb)
	}
	why, fetched := f.await(ctx, p.namespace, p.entry.ID())
	if fetched {
		t0 := time.Now()
		err := p.applySandboxLayer(m, f)
		if err == nil {
			err = p.sb.Launch(ctx, nil)
		}
		if err == nil {
			p.running(p.sb)
			p.logRootfsRestored(ctx, m, f, p.sandbox.Name, time.Since(t0))
			return nil
		}
		why = fmt.Sprintf("start on the root file system of snapshot %s/%s failed: %v", p.namespace, m.UUID, err)
	} else if p.sb.Exited() {
		return fmt.Errorf("container %s was killed while its snapshot downloaded", id)
	}
	reason := report.ReasonRestoreFailed
	if !fetched {
		reason = f.failReason()
	}
	decide(ctx, id, "cold start", why)
	p.dropRestore(fetched)
	// Nothing of the layer may be applied: the placeholder is emptied.
	_ = os.Truncate(p.layerPath(p.sandbox.Name), 0)
	remake := fetched || p.workloadTriggered()
	if remake {
		// A failed start leaves no usable sandbox, and a workload trigger needs its
		// annotations at create: made afresh, without the layer.
		if err := p.sb.WriteSpec(nil); err != nil {
			return fmt.Errorf("rewrite the spec of %s for a cold start: %w", id, err)
		}
	}
	return p.startSandboxCold(ctx, remake, reason, why)
}

// applySandboxLayer gives the sandbox container its downloaded layer of m, unless Plan
// named the layer file itself (p.layerNamed): copied into the placeholder that `runsc
// create` opened (planRootfs), which gVisor reads when the container starts; the same
// open file, so no second `runsc create` (which cost about a second on the 2-core VM).
// A CRI pause container has none.
func (p *Pod) applySandboxLayer(m *manifest.Manifest, f *fetch) error {
	if p.layerNamed || p.sandbox.Name == criSandboxName {
		return nil
	}
	src, ok := layerFile(m, f, p.sandbox.Name)
	if !ok {
		return nil
	}
	return copyInto(p.layerPath(p.sandbox.Name), src)
}

// copyInto copies file src over the existing file dst, keeping dst's inode (a process
// that has dst open reads the new bytes). Go's io.Copy between files uses
// copy_file_range: the bytes do not pass through the shim.
func copyInto(dst, src string) error {
	return copyFile(dst, os.O_WRONLY|os.O_TRUNC, src)
}

// copyFile opens dst with flag and copies src into it; a dst it created (O_EXCL) and
// could not fill is removed.
func copyFile(dst string, flag int, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, flag, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		if flag&os.O_EXCL != 0 {
			os.Remove(dst)
		}
		return fmt.Errorf("copy layer %s to %s: %w", src, dst, err)
	}
	return out.Close()
}

// layerPlanWait bounds how long Plan waits for the download of a sandbox container's
// layer, so that `runsc create` can open the downloaded file itself: the Create RPC
// takes the download's time (tens of ms from a local store, under a second from Cloud
// Storage for 500 MiB here) instead of a copy of the whole layer at Start. A slower
// download goes on alongside `runsc create` and is copied into the placeholder.
const layerPlanWait = 10 * time.Second

// planRootfs is Plan's part for a pod restoring rootfs-only snapshot m, before `runsc
// create` of its sandbox container (runsc opens the layer at create and gVisor reads it
// at start): the container is given its layer file in the node cache (found there, or
// downloaded within layerPlanWait), else an empty placeholder in the pod's work dir
// that applySandboxLayer fills at Start. A CRI pause container has no layer; its
// containers get theirs as they join.
func (p *Pod) planRootfs(m *manifest.Manifest, f *fetch) {
	name := p.sandbox.Name
	if _, ok := m.RootfsLayers()[name]; !ok || name == criSandboxName {
		return
	}
	done := f.cached // a cached fetch is done at once
	if !done {
		select {
		case <-f.done:
			done = true
		case <-time.After(layerPlanWait):
		}
	}
	path := p.layerPath(name)
	if done && f.failed == "" {
		// f's fields may be read only once it is done.
		if src, ok := layerFile(m, f, name); ok {
			path, p.layerNamed = src, true
		}
	}
	if !p.layerNamed {
		_ = os.MkdirAll(filepath.Dir(path), 0o700)
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			log.L.WithError(err).Warn("podsnapshot: the container starts without its root file system layer")
			return
		}
	}
	// gVisor reads the named annotation when the spec carries a CRI container name, the
	// plain one otherwise: both are given.
	if err := p.sb.WriteSpec(map[string]string{AnnRootfsUpperTar: path, namedLayerAnnotation(name): path}); err != nil {
		log.L.WithError(err).Warn("podsnapshot: the container starts without its root file system layer")
	}
}

// validLayerName reports whether container name may name a layer file: no path
// separator, not "." or "..". CRI names are DNS labels; a direct CRI client could send
// anything.
func validLayerName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\\\x00")
}

// layerPath is where container name finds its layer: a path in the pod's work dir,
// named in its spec at Create, filled at its Start (applySandboxLayer,
// startMemberOnLayer).
func (p *Pod) layerPath(name string) string {
	return filepath.Join(p.workDir, "rootfs", repo.RootfsLocal(name))
}

// joinRootfs is Join's part for container mb of a pod restoring a rootfs-only snapshot:
// a container the snapshot has a layer for, with the same key, is created naming its
// layer path (runsc reads it at the container's start).
func (p *Pod) joinRootfs(mb *member) bool {
	m, _ := p.restoring()
	if m == nil || !m.RootfsOnly() {
		return false
	}
	why := ""
	switch _, has := m.RootfsLayers()[mb.name]; {
	case mb.keyErr != nil:
		why = mb.keyErr.Error()
	case !validLayerName(mb.name):
		why = fmt.Sprintf("container name %q cannot name a layer file", mb.name)
	case !has:
		why = fmt.Sprintf("snapshot %s/%s has no layer for a container of that name", p.namespace, m.UUID)
	case !recordedWithKey(m, mb.name, mb.key):
		why = fmt.Sprintf("the container's spec or image differs from the one snapshot %s/%s recorded under its name", p.namespace, m.UUID)
	}
	if why != "" {
		decide(context.Background(), mb.t.ID(), "cold start", fmt.Sprintf("container %s starts without a root file system layer: %s", mb.name, why))
		return false
	}
	if err := mb.t.WriteSpec(map[string]string{namedLayerAnnotation(mb.name): p.layerPath(mb.name)}); err != nil {
		log.L.WithError(err).WithField("id", mb.t.ID()).Warn("podsnapshot: the container starts without its root file system layer")
		return false
	}
	return true
}

// recordedWithKey reports whether m records container name with key.
func recordedWithKey(m *manifest.Manifest, name, key string) bool {
	for _, c := range m.Containers {
		if c.Name == name {
			return c.Key == key
		}
	}
	return false
}

// startMemberOnLayer makes the layer of member mb at its path before it starts: a hard
// link to (or, across file systems, a copy of) the fetched layer, so that the node cache
// may drop its entry before runsc opens the file; or, when the download failed or the pod
// gave up waiting for it (restore_wait_seconds), an empty tar archive: the container then
// starts on its image alone, as a cold start, and the log says why. A container started
// again (kubelet restarts it under the same name) gets the layer again: its start is the
// image plus the layer, as the first time.
func (p *Pod) startMemberOnLayer(ctx context.Context, mb *member) {
	m, f := p.restoring()
	path := p.layerPath(mb.name)
	_ = os.MkdirAll(filepath.Dir(path), 0o700)
	// What an earlier start of the same name left is replaced, never written through.
	_ = os.Remove(path)
	why := ""
	if m == nil || f == nil {
		why = "the pod's snapshot was dropped"
	} else {
		wctx, cancel := context.WithTimeout(ctx, p.cfg.RestoreWait())
		w, ok := f.await(wctx, p.namespace, p.entry.ID())
		cancel()
		if !ok {
			why = w
		} else if src, has := layerFile(m, f, mb.name); !has {
			why = fmt.Sprintf("snapshot %s/%s has no layer for container %s", p.namespace, m.UUID, mb.name)
		} else {
			t0 := time.Now()
			if err := linkOrCopy(src, path); err != nil {
				why = fmt.Sprintf("its layer could not be put in place: %v", err)
			} else {
				p.logRootfsRestored(ctx, m, f, mb.name, time.Since(t0))
				return
			}
		}
	}
	decide(ctx, mb.t.ID(), "cold start", fmt.Sprintf("container %s starts without its root file system layer: %s", mb.name, why))
	if err := writeNew(path, make([]byte, 1024)); err != nil { // an empty tar archive
		log.G(ctx).WithError(err).Warn("podsnapshot: could not write an empty layer")
	}
}

// linkOrCopy makes dst (which must not exist) the file src: a hard link, or a copy where
// they are on different file systems.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	return copyFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, src)
}

// writeNew creates file path, which must not exist (a link left there is not followed),
// with data.
func writeNew(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// logRootfsRestored logs and reports that container name starts on its root file
// system layer from m: the time since the lookup began, of which the download and the
// start's preparation (took).
func (p *Pod) logRootfsRestored(ctx context.Context, m *manifest.Manifest, f *fetch, name string, took time.Duration) {
	total := time.Since(p.lookupStart)
	msg := fmt.Sprintf("Successfully restored the root file system of container %s from PodSnapshot %s/%s (scope %s) in %d ms (download %d ms, layer %d ms); its processes start fresh",
		name, p.namespace, m.UUID, m.ScopeName(), total.Milliseconds(), f.took.Milliseconds(), took.Milliseconds())
	log.G(ctx).WithFields(log.Fields{"id": p.sb.ID(), "decision": "restored", "reason": v1.EventReason, "scope": m.ScopeName()}).
		Infof("podsnapshot: restored: %s", msg)
	p.reportRestored(ctx, m, f, total, msg)
	p.touchLater(ctx, m)
}
