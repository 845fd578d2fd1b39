package main

import (
	"context"
	"errors"
	"fmt"
)

var rmCommand = &command{
	name:    "rm",
	usage:   "[-n NAMESPACE] NAME...",
	summary: "delete snapshots from storage",
	help: `
Deletes each snapshot NAME (its UUID, or NAMESPACE/UUID; looked up in every namespace, or
only NAMESPACE with -n): first its manifest, so that from then on no restore can pick it,
then its files and index marker. Each deletion is one line on stdout. A NAME that does
not exist, or a deletion that fails, is an error naming it (exit status 1); the other
names are deleted all the same.`,
	run: runRm,
}

func runRm(ctx context.Context, c *cli, args []string) error {
	fs := c.flagSet()
	var namespace string
	c.stringFlag(fs, &namespace, "n", "namespace", "", "look only in this `namespace` (default: all)")
	names, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(names) == 0 {
		return usagef("want at least one snapshot NAME")
	}
	e, err := c.openEnv(ctx)
	if err != nil {
		return err
	}
	defer e.close()
	snaps, listErr := c.snapshots(ctx, e, namespace)
	var errs []error
	for _, name := range names {
		found := matching(snaps, name)
		if len(found) == 0 {
			errs = append(errs, notFound(name, namespace))
			continue
		}
		for _, s := range found {
			if err := s.store.repo.Delete(ctx, s.Manifest); err != nil {
				errs = append(errs, fmt.Errorf("delete PodSnapshot %s: %w", s.ID(), err))
				continue
			}
			_, stored := s.Sizes()
			fmt.Fprintf(c.stdout, "podsnapshot %q deleted from %s (policy %s, %d files, %s)\n",
				s.ID(), s.store.url, s.Policy, len(s.Files), humanBytes(stored))
		}
		snaps = without(snaps, found)
	}
	if len(errs) > 0 {
		errs = append(errs, listErr)
	}
	return errors.Join(errs...)
}

// without returns snaps minus those in drop (so a name given twice is "not found" the
// second time rather than deleted twice).
func without(snaps, drop []snapshot) []snapshot {
	out := snaps[:0:0]
	for _, s := range snaps {
		keep := true
		for _, d := range drop {
			if s.Manifest == d.Manifest {
				keep = false
			}
		}
		if keep {
			out = append(out, s)
		}
	}
	return out
}
