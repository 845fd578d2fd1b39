package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/util/duration"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
)

// tableHeader is the header of `podsnapshot ls`, as kubectl prints PodSnapshots;
// wideHeader is what -o wide adds.
var (
	tableHeader = []string{"NAME", "STATUS", "POLICY", "AGE"}
	wideHeader  = []string{"KEY", "SCOPE", "SIZE", "STORE"}
)

// tableRow is s's line of `podsnapshot ls` at now: NAME (the UUID), STATUS
// (Manifest.Status), POLICY, AGE, and with wide KEY (manifest.ShortKey), SCOPE
// (whole-pod or rootfs-only), SIZE (bytes stored) and STORE (the store's URL).
func tableRow(s snapshot, now time.Time, wide bool) []string {
	row := []string{s.UUID, s.Status(), s.Policy, age(s.CreatedAt, now)}
	if wide {
		_, stored := s.Sizes()
		row = append(row, manifest.ShortKey(s.Key), s.ScopeName(), humanBytes(stored), s.store.url)
	}
	return row
}

// age formats now - t as kubectl's AGE column does: "45s", "5m", "3h5m", "2d", ...;
// "<unknown>" for a zero t.
func age(t, now time.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(t))
}

// writeTable prints snaps as kubectl does: the header NAME STATUS POLICY AGE (preceded
// by NAMESPACE when withNamespace, followed by KEY SCOPE SIZE STORE when wide), then one
// tableRow per snapshot, columns padded with spaces, 3 between columns. It returns the
// writer's error.
func writeTable(w io.Writer, snaps []snapshot, withNamespace, wide bool, now time.Time) error {
	tw := tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
	line := func(namespace string, cells []string) {
		if withNamespace {
			cells = append([]string{namespace}, cells...)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	header := tableHeader
	if wide {
		header = append(header[:len(header):len(header)], wideHeader...)
	}
	line("NAMESPACE", header)
	for _, s := range snaps {
		line(s.Namespace, tableRow(s, now, wide))
	}
	return tw.Flush()
}
