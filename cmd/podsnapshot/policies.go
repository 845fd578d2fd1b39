package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/podsnapshot/podsnapshot/checkpoint/policy"
	"github.com/podsnapshot/podsnapshot/checkpoint/retention"
)

var policiesCommand = &command{
	name:    "policies",
	usage:   "",
	summary: "show the loaded policies and the policy directory's errors",
	help: `
Reads the policy directory as the shim does and prints the policies that loaded
(NAMESPACE NAME TRIGGER POST-CHECKPOINT STORAGE RETENTION FILE, where FILE is
path:document), the storage configs, and then under ERRORS every document that was
skipped, each naming file, document, object and field. Skipped documents do not change
the exit status; only a config or policy directory that cannot be read does (1).`,
	run: runPolicies,
}

func runPolicies(_ context.Context, c *cli, args []string) error {
	pos, err := c.parse(c.flagSet(), args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	e, err := c.loadPolicies()
	if err != nil {
		return err
	}
	w := c.stdout
	if len(e.set.Policies) == 0 {
		missing := ""
		if _, err := os.Stat(e.set.Dir); errors.Is(err, os.ErrNotExist) {
			missing = " (the directory does not exist)"
		}
		fmt.Fprintf(w, "No policies in %s%s.\n", e.set.Dir, missing)
	} else {
		writePolicies(w, e.set.Policies)
	}
	if len(e.set.StorageConfigs) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
		fmt.Fprintln(tw, "STORAGE CONFIG\tURL")
		names := make([]string, 0, len(e.set.StorageConfigs))
		for n := range e.set.StorageConfigs {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(tw, "%s\t%s\n", n, e.set.StorageConfigs[n].StoreURL())
		}
		tw.Flush()
	}
	if len(e.set.Errors) > 0 {
		fmt.Fprintf(w, "\nERRORS (%d)\n", len(e.set.Errors))
		for _, err := range e.set.Errors {
			fmt.Fprintln(w, err)
		}
	}
	return nil
}

// writePolicies prints one table row per policy.
func writePolicies(w io.Writer, entries []*policy.Entry) {
	tw := tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tTRIGGER\tPOST-CHECKPOINT\tSTORAGE\tRETENTION\tFILE")
	for _, p := range entries {
		t := p.Policy.Spec.TriggerConfig
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s:%d\n", p.Policy.Namespace, p.Policy.Name, t.Type, t.PostCheckpoint,
			p.StoreURL, retentionText(p), p.File, p.Document)
	}
	tw.Flush()
}

// retentionText sums up a policy's retention rules: "lastAccess 7d, 3/group", or "-".
func retentionText(p *policy.Entry) string {
	rules, err := p.Policy.RetentionRules()
	if err != nil {
		return "invalid"
	}
	var parts []string
	if rules.LastAccessTimeout > 0 {
		parts = append(parts, "lastAccess "+retention.FormatDuration(rules.LastAccessTimeout))
	}
	if rules.MaxPerGroup > 0 {
		parts = append(parts, fmt.Sprintf("%d/group", rules.MaxPerGroup))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}
