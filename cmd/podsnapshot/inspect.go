package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"sigs.k8s.io/yaml"
)

var inspectCommand = &command{
	name:    "inspect",
	usage:   "[-n NAMESPACE] NAME",
	summary: "show a snapshot's PodSnapshot view and manifest",
	help: `
Finds snapshot NAME (its UUID, or NAMESPACE/UUID) in every store of the policy directory
and every namespace (only NAMESPACE with -n), and prints two YAML documents: the
PodSnapshot object (conditions Ready and Checkpoint, storage path, last access), then the
manifest: key, compatibility tuple (runsc version and flags, CPU, GPUs), labels, source
pod and, per file, raw and stored size, codec, xxh64 and crc32c. A snapshot that does not
exist is an error (exit status 1).`,
	run: runInspect,
}

func runInspect(ctx context.Context, c *cli, args []string) error {
	fs := c.flagSet()
	var namespace string
	c.stringFlag(fs, &namespace, "n", "namespace", "", "look only in this `namespace` (default: all)")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one snapshot NAME, got %d arguments", len(pos))
	}
	name := pos[0]
	e, err := c.openEnv(ctx)
	if err != nil {
		return err
	}
	defer e.close()
	snaps, listErr := c.snapshots(ctx, e, namespace)
	found := matching(snaps, name)
	if len(found) == 0 {
		return errors.Join(notFound(name, namespace), listErr)
	}
	for i, s := range found {
		if i > 0 {
			fmt.Fprintln(c.stdout, "---")
		}
		if err := writeInspect(c.stdout, s); err != nil {
			return err
		}
	}
	return nil
}

// writeInspect prints s's PodSnapshot view, "---", a comment naming the manifest object
// and summing up the files, and the manifest, all as YAML.
func writeInspect(w io.Writer, s snapshot) error {
	view, err := yaml.Marshal(s.PodSnapshot(s.store.url))
	if err != nil {
		return err
	}
	man, err := yaml.Marshal(s.Manifest)
	if err != nil {
		return err
	}
	raw, stored := s.Sizes()
	ratio := 0.0
	if raw > 0 {
		ratio = 100 * float64(stored) / float64(raw)
	}
	_, err = fmt.Fprintf(w, "%s---\n# manifest %s\n# %d files: %s raw, %s stored (%.1f%%)\n%s",
		view, s.store.repo.Store.URL(s.ObjectName()), len(s.Files), humanBytes(raw), humanBytes(stored), ratio, man)
	return err
}
