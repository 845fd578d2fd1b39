package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/internal/workdir"
)

var gcCommand = &command{
	name:    "gc",
	usage:   "[--dry-run] [-n NAMESPACE] [--failed-ttl DURATION] [--orphan-ttl DURATION]",
	summary: "apply retention rules; delete old Failed snapshots",
	help: `
Applies each policy's retention rules to the committed snapshots it owns (same namespace
and policy name, in the store of its storage config):

  retentionConfig.lastAccessTimeout   deletes a snapshot neither restored from nor
                                      created within the timeout
  maxSnapshotCountPerGroup            keeps the newest N of each group, deleting the
                                      oldest first

Snapshots in state Failed (a restore found them corrupt, or their checkpoint failed) can
never be restored again; they are kept for --failed-ttl after they were marked, so that
'podsnapshot ls' and 'inspect' can show why, and then deleted, whatever their policy.
--failed-ttl 0 keeps them.

Objects that belong to no snapshot (the files of an upload whose shim died before it
wrote the manifest, and their index markers) are deleted once older than --orphan-ttl
(default 1h; younger ones may be an upload in progress); --orphan-ttl 0 keeps them.
Temporary objects of uploads (parts of composite uploads under .podsnapshot-tmp/ in a
bucket, .podsnapshot-tmp-* files in a local store) are deleted by the upload itself, also
when it fails; those of an upload cut off by a crash of the shim or of the store are
deleted here once the upload wrote nothing for --orphan-ttl. They do not say which
namespace they were for, so with -n they are left alone.

On the node, the work directory of a pod whose shim died (killed or crashed) is removed
with what is mounted in it: checkpoint images that never reached storage, and the FUSE
mount a streamed restore was served from. A live shim holds a lock on its pods' work
directories, so theirs are never touched. (The next shim of a matched pod, and containerd's
cleanup of the dead shim, do the same.) With -n this is left alone too.

Snapshots of policies that are not in the policy directory are left alone (remove them by
name with 'podsnapshot rm'). Each deletion is one line with its reason; --dry-run prints
the same lines without deleting. With -n, only that namespace is collected.`,
	run: runGC,
}

func runGC(ctx context.Context, c *cli, args []string) error {
	fs := c.flagSet()
	var namespace string
	var dryRun bool
	c.stringFlag(fs, &namespace, "n", "namespace", "", "collect only this `namespace` (default: all)")
	fs.BoolVar(&dryRun, "dry-run", false, "print what would be deleted, delete nothing")
	failedTTL := fs.Duration("failed-ttl", time.Hour, "delete Failed snapshots marked longer ago than this; 0 keeps them")
	orphanTTL := fs.Duration("orphan-ttl", time.Hour, "delete objects of no snapshot written longer ago than this; 0 keeps them")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	if *failedTTL < 0 {
		return usagef("--failed-ttl %s: must not be negative", *failedTTL)
	}
	if *orphanTTL < 0 {
		return usagef("--orphan-ttl %s: must not be negative", *orphanTTL)
	}
	e, err := c.openEnv(ctx)
	if err != nil {
		return err
	}
	defer e.close()
	snaps, listErr := c.snapshots(ctx, e, namespace)
	errs := []error{listErr}
	now := c.now()

	type deletion struct {
		s      snapshot
		reason string
	}
	var plan []deletion
	for _, p := range e.set.Policies {
		if namespace != "" && p.Policy.Namespace != namespace {
			continue
		}
		rules, err := p.Policy.RetentionRules()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		st := e.storeFor(p.StoreURL)
		byID := map[string]snapshot{}
		var ms []*manifest.Manifest
		for _, s := range snaps {
			if s.store == st {
				byID[s.UUID] = s
				ms = append(ms, s.Manifest)
			}
		}
		for _, d := range repo.PlanRetention(ms, p.Policy.Namespace, p.Policy.Name, rules, now) {
			plan = append(plan, deletion{byID[d.ID], fmt.Sprintf("policy %s: %s", p.ID(), d.Reason)})
		}
	}
	if *failedTTL > 0 {
		for _, s := range snaps {
			if s.State != manifest.StateFailed {
				continue
			}
			marked := failedAt(ctx, s)
			if now.Sub(marked) > *failedTTL {
				plan = append(plan, deletion{s, fmt.Sprintf("Failed since %s, longer than --failed-ttl %s: %s",
					marked.UTC().Format(time.RFC3339), *failedTTL, s.Reason)})
			}
		}
	}

	verb := "deleted"
	if dryRun {
		verb = "would delete"
	}
	done := 0
	for _, d := range plan {
		if !dryRun {
			if err := d.s.store.repo.Delete(ctx, d.s.Manifest); err != nil {
				errs = append(errs, fmt.Errorf("delete PodSnapshot %s: %w", d.s.ID(), err))
				continue
			}
		}
		done++
		fmt.Fprintf(c.stdout, "%s %s: %s\n", verb, d.s.ID(), d.reason)
	}
	orphans := 0
	if *orphanTTL > 0 {
		for _, st := range e.stores {
			objs, err := st.repo.Orphans(ctx, namespace, now.Add(-*orphanTTL))
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, o := range objs {
				if !dryRun {
					if err := st.repo.Store.Delete(ctx, o.Name); err != nil {
						errs = append(errs, err)
						continue
					}
				}
				orphans++
				fmt.Fprintf(c.stdout, "%s %s: belongs to no snapshot, written %s\n", verb, st.repo.Store.URL(o.Name), o.Updated.UTC().Format(time.RFC3339))
			}
		}
	}
	temps := 0
	if *orphanTTL > 0 && namespace == "" {
		var err error
		temps, err = c.collectTemps(ctx, e, now.Add(-*orphanTTL), dryRun, verb)
		errs = append(errs, err)
	}
	dirs := 0
	if namespace == "" {
		var err error
		dirs, err = c.collectWorkDirs(e.cfg.WorkDir, dryRun, verb)
		errs = append(errs, err)
	}
	todo := map[bool]string{false: "deleted", true: "to delete"}[dryRun]
	fmt.Fprintf(c.stdout, "gc: %d %s, %d kept; %d orphaned objects %s; %d temporary objects %s; %d work dirs of dead shims %s\n",
		done, todo, len(snaps)-done, orphans, todo, temps, todo, dirs, todo)
	return errors.Join(errs...)
}

// collectTemps deletes (or with dryRun only prints) the temporary objects of every store
// whose upload wrote nothing since cutoff, one line each; n counts them.
func (c *cli) collectTemps(ctx context.Context, e *env, cutoff time.Time, dryRun bool, verb string) (n int, err error) {
	var errs []error
	for _, st := range e.stores {
		objs, err := st.repo.StaleTemps(ctx, cutoff)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, o := range objs {
			if !dryRun {
				if err := st.repo.DeleteTemp(ctx, o.Name); err != nil {
					errs = append(errs, err)
					continue
				}
			}
			n++
			fmt.Fprintf(c.stdout, "%s %s: temporary object of an unfinished upload, written %s\n",
				verb, st.repo.Store.URL(o.Name), o.Updated.UTC().Format(time.RFC3339))
		}
	}
	return n, errors.Join(errs...)
}

// collectWorkDirs removes (or with dryRun only prints) the pod work directories under
// workDir whose shim died (workdir.Sweep), one line each; n counts them.
func (c *cli) collectWorkDirs(workDir string, dryRun bool, verb string) (n int, err error) {
	find := workdir.Sweep
	if dryRun {
		find = workdir.Dead
	}
	dirs, err := find(workDir)
	for _, dir := range dirs {
		fmt.Fprintf(c.stdout, "%s %s: work dir of a pod whose shim died (its checkpoint images never reached storage)\n", verb, dir)
	}
	return len(dirs), err
}

// failedAt is when s was marked Failed: its manifest's last write in the store (MarkFailed
// rewrites it), or its creation when the store cannot say.
func failedAt(ctx context.Context, s snapshot) time.Time {
	info, err := s.store.repo.Store.Stat(ctx, s.ObjectName())
	if err != nil || info.Updated.IsZero() || info.Updated.Before(s.CreatedAt) {
		return s.CreatedAt
	}
	return info.Updated
}
