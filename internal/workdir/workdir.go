// Package workdir keeps the pods' work directories under a node's work_dir
// (<work_dir>/<containerd namespace>/<sandbox id>): a pod's checkpoint images before
// they reach storage (its memory), the FUSE mount a streamed restore is served from,
// root file system layers. The shim serving a pod holds an flock on the directory's
// owner file (OwnerFile) for as long as it runs, so that a directory left by a shim that
// died (killed, crashed: its lock went with it) can be told from a live one and removed
// with what is mounted in it (Sweep): by the next shim of a matched pod, by containerd's
// cleanup of the dead shim (`shim delete`), or by `podsnapshot gc`.
package workdir

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// OwnerFile is the file in a pod's work directory whose flock its shim holds.
const OwnerFile = ".owner"

// Dir is a pod's work directory, claimed by this process.
type Dir struct {
	// Path is the directory.
	Path string
	lock *os.File
}

// Claim creates the work directory at path (0700, with its parents) and takes its owner
// lock, which this process holds until Release. The owner file appears (by rename)
// already locked, so that a Sweep never sees it unlocked. A path reused while a Sweep
// removes what a dead owner left there is claimed once that is done (within
// claimPatience). Errors name path; a directory another live process owns is an error.
func Claim(path string) (*Dir, error) {
	deadline := time.Now().Add(claimPatience)
	for {
		d, busy, err := claim(path)
		if !busy || time.Now().After(deadline) {
			return d, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// claimPatience bounds how long Claim waits for a Sweep of the same path.
const claimPatience = 2 * time.Second

// claim is one attempt of Claim; busy says another process holds the old owner file's
// lock (a live owner, or a Sweep removing the directory) or removed the directory under
// it: worth another try.
func claim(path string) (d *Dir, busy bool, err error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, false, fmt.Errorf("work dir %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(path, OwnerFile+".tmp-")
	if errors.Is(err, os.ErrNotExist) {
		return nil, true, fmt.Errorf("work dir %s: %w", path, err)
	}
	if err != nil {
		return nil, false, fmt.Errorf("work dir %s: %w", path, err)
	}
	drop := func() { tmp.Close(); os.Remove(tmp.Name()) }
	if err := unix.Flock(int(tmp.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		drop()
		return nil, false, fmt.Errorf("work dir %s: lock: %w", path, err)
	}
	// An owner file left by a dead owner stays locked by us until the new one has
	// replaced it: a Sweep that opened it meanwhile then finds, once it has the lock,
	// that it no longer owns the directory (sweepOne compares the inodes).
	if old, err := os.Open(filepath.Join(path, OwnerFile)); err == nil {
		defer old.Close()
		if unix.Flock(int(old.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			drop()
			return nil, true, fmt.Errorf("work dir %s: owned by another live process", path)
		}
	}
	if err := os.Rename(tmp.Name(), filepath.Join(path, OwnerFile)); err != nil {
		drop()
		return nil, errors.Is(err, os.ErrNotExist), fmt.Errorf("work dir %s: %w", path, err)
	}
	return &Dir{Path: path, lock: tmp}, false, nil
}

// Release lets go of the owner lock; the caller has removed the directory, or leaves it
// to the next Sweep. A nil Dir is a no-op.
func (d *Dir) Release() {
	if d != nil && d.lock != nil {
		d.lock.Close()
		d.lock = nil
	}
}

// Sweep removes every pod work directory under root (<root>/<namespace>/<id>) whose
// owner lock no live process holds: what is mounted beneath it (a dead shim's FUSE
// mount answers ENOTCONN) is detached first, then the directory is removed. A directory
// without an owner file is not a pod's (the node cache, the report spool) or belongs to a
// shim too old to lock it, and is left alone; so is one whose mounts cannot all be
// detached (removing through a mount would delete what it mounts). It returns the
// directories removed; errors name the directory.
func Sweep(root string) (removed []string, err error) {
	return walk(root, true)
}

// Clean is Sweep that logs each directory it removed, and its error as a warning: for
// the shim, which cleans up behind dead shims on its own (at its start, and as `shim
// delete`). An empty root is a no-op.
func Clean(ctx context.Context, root string) {
	if root == "" {
		return
	}
	removed, err := Sweep(root)
	for _, dir := range removed {
		log.G(ctx).Infof("podsnapshot: removed %s, the work dir of a pod whose shim died", dir)
	}
	if err != nil {
		log.G(ctx).WithError(err).Warn("podsnapshot: work dirs of dead shims not all removed")
	}
}

// Dead returns the pod work directories under root that Sweep would remove.
func Dead(root string) ([]string, error) {
	return walk(root, false)
}

// walk finds the work directories of dead owners under root and, with remove, removes
// them (sweepOne).
func walk(root string, remove bool) (dead []string, err error) {
	// Mount points are compared as the kernel reports them: without symbolic links.
	if real, err := filepath.EvalSymlinks(root); err == nil {
		root = real
	}
	namespaces, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sweep work dirs: %w", err)
	}
	var errs []error
	for _, ns := range namespaces {
		if !ns.IsDir() {
			continue
		}
		pods, err := os.ReadDir(filepath.Join(root, ns.Name()))
		if err != nil {
			errs = append(errs, fmt.Errorf("sweep work dirs: %w", err))
			continue
		}
		for _, pod := range pods {
			dir := filepath.Join(root, ns.Name(), pod.Name())
			if !pod.IsDir() {
				continue
			}
			found, err := sweepOne(dir, remove)
			if err != nil {
				errs = append(errs, err)
			}
			if found {
				dead = append(dead, dir)
			}
		}
	}
	return dead, errors.Join(errs...)
}

// sweepOne reports whether dir is a pod work directory whose owner is gone and, with
// remove, removes it (dead is then false when it could not be).
func sweepOne(dir string, remove bool) (dead bool, err error) {
	ownerPath := filepath.Join(dir, OwnerFile)
	owner, err := os.OpenFile(ownerPath, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, nil // not a pod's, or too old to say: left alone
	}
	defer owner.Close()
	if err := unix.Flock(int(owner.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return false, nil // its shim lives
	}
	// Still the owner file, and a regular one: not replaced by a new owner's (Claim)
	// between the open and the lock.
	var locked, now unix.Stat_t
	if unix.Fstat(int(owner.Fd()), &locked) != nil || unix.Lstat(ownerPath, &now) != nil ||
		locked.Ino != now.Ino || locked.Dev != now.Dev || locked.Mode&unix.S_IFMT != unix.S_IFREG {
		return false, nil
	}
	if !remove {
		return true, nil
	}
	abortFUSE(dir)
	// Deepest first; MNT_DETACH also takes a FUSE mount whose server died (ENOTCONN).
	if err := mount.UnmountRecursive(dir, unix.MNT_DETACH); err != nil {
		return false, fmt.Errorf("work dir %s of a dead shim: unmount: %w", dir, err)
	}
	if left, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir)); err != nil || len(left) > 0 {
		return false, fmt.Errorf("work dir %s of a dead shim: still mounted beneath it (%d mounts, %v): not removed", dir, len(left), err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return false, fmt.Errorf("work dir %s of a dead shim: %w", dir, err)
	}
	return true, nil
}

// fuseConnections is where the kernel's fusectl file system lists FUSE connections.
const fuseConnections = "/sys/fs/fuse/connections"

// abortFUSE aborts the connection of every FUSE mount at or below dir (fusectl's abort),
// so that its pending and later requests fail at once: a mount whose server died is
// already dead unless another process kept the device open (a child that inherited it),
// and then whoever touches it would hang. Best effort: fusectl is mounted if it is not.
func abortFUSE(dir string) {
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return
	}
	for _, m := range ms {
		if m.FSType != "fuse" && !strings.HasPrefix(m.FSType, "fuse.") {
			continue
		}
		abort := filepath.Join(fuseConnections, strconv.Itoa(m.Major<<20|m.Minor), "abort")
		if _, err := os.Stat(abort); err != nil {
			_ = unix.Mount("fusectl", fuseConnections, "fusectl", 0, "")
		}
		_ = os.WriteFile(abort, []byte("1"), 0)
	}
}
