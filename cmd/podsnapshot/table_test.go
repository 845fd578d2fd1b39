package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/storage"
)

func TestWriteTable(t *testing.T) {
	created := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	st := &store{url: "file:///store"}
	a := manifest.New("default", "my-app", strings.Repeat("ab", 32), compat.Tuple{}, created)
	a.UUID, a.State = "0b6c5c8e-4f0e-4a5d-9d4e-2c1f7a9b3e10", manifest.StateCommitted
	a.Files = []storage.FileInfo{{RawSize: 4096, StoredSize: 2048}}
	b := manifest.New("jobs", "inference", strings.Repeat("cd", 32), compat.Tuple{}, created.Add(-3*24*time.Hour))
	b.UUID, b.State, b.Reason = "11111111-2222-4333-8444-555555555555", manifest.StateFailed, "x"
	snaps := []snapshot{{a, st}, {b, st}}
	now := created.Add(5 * time.Minute)

	var buf bytes.Buffer
	if err := writeTable(&buf, snaps, false, false, now); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"NAME                                   STATUS                  POLICY      AGE\n" +
		"0b6c5c8e-4f0e-4a5d-9d4e-2c1f7a9b3e10   AllSnapshotsAvailable   my-app      5m\n" +
		"11111111-2222-4333-8444-555555555555   Failed                  inference   3d\n"
	if buf.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", buf.String(), want)
	}

	buf.Reset()
	_ = writeTable(&buf, snaps[:1], true, true, now)
	want = "" +
		"NAMESPACE   NAME                                   STATUS                  POLICY   AGE   KEY                SCOPE       SIZE     STORE\n" +
		"default     0b6c5c8e-4f0e-4a5d-9d4e-2c1f7a9b3e10   AllSnapshotsAvailable   my-app   5m    abababababababab   whole-pod   2.0KiB   file:///store\n"
	if buf.String() != want {
		t.Errorf("wide, with namespace:\n%s\nwant:\n%s", buf.String(), want)
	}
}

func TestAge(t *testing.T) {
	created := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for d, want := range map[time.Duration]string{
		45 * time.Second:             "45s",
		5 * time.Minute:              "5m",
		3*time.Hour + 5*time.Minute:  "3h5m",
		3 * time.Hour:                "3h",
		2 * 24 * time.Hour:           "2d",
		2*24*time.Hour + 5*time.Hour: "2d5h",
		400 * 24 * time.Hour:         "400d",
		3 * 365 * 24 * time.Hour:     "3y",
	} {
		if got := age(created, created.Add(d)); got != want {
			t.Errorf("age(%v) = %q; want %q", d, got, want)
		}
	}
	if got := age(time.Time{}, created); got != "<unknown>" {
		t.Errorf("zero: %q", got)
	}
}
