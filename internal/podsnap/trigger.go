package podsnap

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// gVisor's workload-trigger annotations (runsc/boot/restore.go): with them the sandbox
// shows /proc/gvisor/checkpoint and saves itself into path when the workload writes 1.
const (
	annInternalPrefix        = "dev.gvisor.internal."
	annCheckpointPrefix      = annInternalPrefix + "checkpoint."
	annCheckpointPath        = annCheckpointPrefix + "path"
	annCheckpointEnable      = annCheckpointPrefix + "enable"
	annCheckpointResume      = annCheckpointPrefix + "resume"
	annCheckpointCompression = annCheckpointPrefix + "compression"
	annCheckpointDirect      = annCheckpointPrefix + "direct"
	// annCheckpointExcludeZeroPages: gVisor also scans the pages it knows were committed
	// and leaves the zero-filled ones out of the image (config exclude_zero_pages).
	annCheckpointExcludeZeroPages = annCheckpointPrefix + "exclude-committed-zero-pages"
)

// AnnRootfsUpperTar is gVisor's annotation naming a tar archive that runsc applies to a
// container's rootfs overlay before it starts (runsc/specutils: RootfsTarUpperPath);
// AnnRootfsUpperTar+"."+name for the container called name in a pod of several
// containers. runsc accepts it only under --allow-rootfs-tar-annotation, which the shim
// sets.
const AnnRootfsUpperTar = "dev.gvisor.tar.rootfs.upper"

// enableWorkloadTrigger adds gVisor's checkpoint annotations to the sandbox's bundle so
// the workload can checkpoint itself by writing 1 to /proc/gvisor/checkpoint. runsc
// writes the image uncompressed: the lifecycle compresses it on the way to storage,
// faster than runsc's flate. gVisor reads the save's options (resume, compression,
// direct, exclude-committed-zero-pages) from the sandbox's spec only, whichever
// container triggers the save, so members get no more than enable.
func (p *Pod) enableWorkloadTrigger() error {
	dir := filepath.Join(p.workDir, "checkpoint")
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
	direct := p.cfg.SaveDirect && opensODirect(probe.Name())
	os.Remove(probe.Name())
	if err := p.sb.WriteSpec(map[string]string{
		annCheckpointPath:        dir,
		annCheckpointEnable:      "true",
		annCheckpointResume:      fmt.Sprint(!p.stop || p.rootfsOnly()),
		annCheckpointCompression: "none",
		annCheckpointDirect:      fmt.Sprint(direct),

		annCheckpointExcludeZeroPages: fmt.Sprint(p.cfg.ExcludeZeroPages),
	}); err != nil {
		return err
	}
	p.mu.Lock()
	p.workloadTrigger, p.checkpointDir = true, dir
	p.mu.Unlock()
	return nil
}

// opensODirect reports whether the file at path opens with O_DIRECT, which its
// filesystem may refuse (tmpfs does). runsc opens the checkpoint's pages file at create,
// with O_DIRECT when the direct annotation says so, and fails the pod where it cannot:
// the lifecycle asks for it (config save_direct) only where its probe file opens that
// way. Off by default: docs/benchmarks.md and the README give the measured trade.
func opensODirect(path string) bool {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// checkpointTarget returns the directory the workload's checkpoints are saved into, and
// whether the workload may trigger one in this pod (a restored pod may not: runsc has no
// image files open for it).
func (p *Pod) checkpointTarget() (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.checkpointDir, p.workloadTrigger && p.restore == nil
}

// enableMemberTrigger lets container t, joining a sandbox whose workload may checkpoint
// itself, trigger the checkpoint too. gVisor mounts /proc per container and makes
// /proc/gvisor/checkpoint writable only where that container's own spec has the enable
// annotation; the save itself follows the sandbox's annotations and saves every
// container. Called before `runsc create` of t.
func (p *Pod) enableMemberTrigger(t Task) error {
	if _, ok := p.checkpointTarget(); !ok {
		return nil
	}
	return t.WriteSpec(map[string]string{annCheckpointEnable: "true"})
}
