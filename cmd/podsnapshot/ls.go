package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"sigs.k8s.io/yaml"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
)

var lsCommand = &command{
	name:    "ls",
	usage:   "[-n NAMESPACE | -A] [-o wide|json|yaml]",
	summary: "list snapshots",
	help: `
Lists the snapshots of one namespace (default "default"), or of all with -A, in every
store named by a PodSnapshotStorageConfig of the policy directory, oldest first:
NAME STATUS POLICY AGE, as kubectl prints PodSnapshots. STATUS is the reason of the
Ready condition: AllSnapshotsAvailable (committed), Failed (see 'podsnapshot inspect
NAME' for why) or AwaitingCheckpoint.

  -o wide   adds KEY (the snapshot key, shortened), SCOPE (whole-pod, or rootfs-only:
            root file system layers, no memory), SIZE (bytes stored) and STORE
  -o json   a kubectl-style List of PodSnapshot objects; -o yaml the same in YAML

Manifests that cannot be read are warnings on stderr. A store that cannot be opened or
listed is an error (exit status 1) after the snapshots of the other stores are printed.`,
	run: runLs,
}

// podSnapshotList is what kubectl prints for `get -o json` of several objects.
type podSnapshotList struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Items      []*v1.PodSnapshot `json:"items"`
	Metadata   struct {
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
}

func runLs(ctx context.Context, c *cli, args []string) error {
	fs := c.flagSet()
	var namespace, output string
	var all bool
	c.stringFlag(fs, &namespace, "n", "namespace", "default", "`namespace` to list")
	c.boolFlag(fs, &all, "A", "all-namespaces", "list every namespace (adds a NAMESPACE column)")
	c.stringFlag(fs, &output, "o", "output", "", "output `format`: wide, json or yaml")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q (ls takes no arguments; to show one snapshot use inspect)", pos[0])
	}
	switch output {
	case "", "wide", "json", "yaml":
	default:
		return usagef("-o %q: want wide, json or yaml", output)
	}
	if all {
		namespace = ""
	}
	e, err := c.openEnv(ctx)
	if err != nil {
		return err
	}
	defer e.close()
	snaps, listErr := c.snapshots(ctx, e, namespace)

	switch output {
	case "json", "yaml":
		err = writeList(c.stdout, snaps, output)
	default:
		if len(snaps) == 0 {
			if namespace != "" {
				fmt.Fprintf(c.stderr, "No snapshots found in %s namespace.\n", namespace)
			} else {
				fmt.Fprintln(c.stderr, "No snapshots found.")
			}
			break
		}
		err = writeTable(c.stdout, snaps, all, output == "wide", c.now())
	}
	if err != nil {
		return err
	}
	return listErr
}

// writeList prints snaps as a List of PodSnapshots in JSON (indented as kubectl does) or
// YAML.
func writeList(w io.Writer, snaps []snapshot, format string) error {
	list := podSnapshotList{APIVersion: "v1", Kind: "List", Items: []*v1.PodSnapshot{}}
	for _, s := range snaps {
		list.Items = append(list.Items, s.PodSnapshot(s.store.url))
	}
	var data []byte
	var err error
	if format == "yaml" {
		data, err = yaml.Marshal(list)
	} else {
		data, err = json.MarshalIndent(list, "", "    ")
		data = append(data, '\n')
	}
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}
