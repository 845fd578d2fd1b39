// Package report is the node-local channel from the shims to the node agent
// (podsnapshot-agent): each shim writes what happened to a matched pod (started cold and
// why, restored, checkpoint started, committed or failed) as one JSON file in a spool
// directory; the agent reads the files in order, turns each into Kubernetes objects and
// events, and removes it only once the API server has taken it. Nothing is lost while the
// agent or the API server is down: the files wait.
//
// A file is written under a hidden temporary name, synced and renamed into place, so a
// reader never sees half a report. Names sort in the order the reports were written on
// this node: "<unix nanoseconds, 20 digits>-<8 hex digits>.json", with "-e" before
// ".json" for a report whose loss costs only an event (Kind.EventOnly), which a full
// spool drops first.
package report

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containerd/log"
)

// Kind says what a report is about.
type Kind string

const (
	// ColdStart: a pod matched by a policy started without a snapshot. Reason says why;
	// Snapshot is the name its checkpoint will be committed under ("" when it will not be
	// checkpointed by a workload trigger).
	ColdStart Kind = "ColdStart"
	// Restored: the pod was restored from Snapshot.
	Restored Kind = "Restored"
	// CheckpointStarted: a checkpoint of the pod into Snapshot began.
	CheckpointStarted Kind = "CheckpointStarted"
	// CheckpointCommitted: Snapshot is stored whole (its manifest is written).
	CheckpointCommitted Kind = "CheckpointCommitted"
	// CheckpointFailed: the checkpoint into Snapshot failed; Message says why.
	CheckpointFailed Kind = "CheckpointFailed"
	// SnapshotFailed: a restore found Snapshot unusable (a file's size or checksum is
	// wrong, or a frame is missing from its object) and marked it Failed in storage, so
	// that later pods start cold; Message says what was wrong. Pod is the pod whose
	// restore found it.
	SnapshotFailed Kind = "SnapshotFailed"
	// RestoredPodStopped: the pod, restored from Snapshot, could not load the rest of its
	// memory after it resumed (a frame bad or missing in storage, or the store stopped
	// answering) and was stopped: it cannot go back to a cold start. Message says why.
	RestoredPodStopped Kind = "RestoredPodStopped"
	// SnapshotDeleted: the shim's retention (after a commit) deleted Snapshot, another
	// snapshot of the same policy, from storage; Message says which rule. Pod is the pod
	// whose commit ran it.
	SnapshotDeleted Kind = "SnapshotDeleted"
)

// EventOnly tells whether losing a report of kind k costs no more than an event and a
// metric: what else it does, a later report of the pod does again (a ColdStart's or
// CheckpointStarted's PodSnapshot is created by the CheckpointCommitted or
// CheckpointFailed that follows), or nothing (RestoredPodStopped). A spool past its
// bound drops these first.
func (k Kind) EventOnly() bool {
	return k == ColdStart || k == CheckpointStarted || k == RestoredPodStopped
}

// eventOnlySuffix ends the name of an EventOnly report, before ".json".
const eventOnlySuffix = "-e"

// Reasons of a ColdStart report (Reason), for events and the cold-start metric.
const (
	ReasonNoSnapshot         = "NoSnapshot"         // no committed snapshot for the pod's key
	ReasonIncompatible       = "Incompatible"       // runsc, its flags, CPU or GPU differ
	ReasonCorrupt            = "Corrupt"            // a file's checksum or size is wrong
	ReasonStorageUnreachable = "StorageUnreachable" // the store could not be read
	ReasonSpecDiffers        = "SpecDiffers"        // a container of the pod differs from the snapshot's
	ReasonRestoreFailed      = "RestoreFailed"      // runsc restore failed
	ReasonOther              = "Other"
)

// Pod names the Kubernetes pod a report is about (from the CRI sandbox annotations). Name
// and UID are empty for a container run without Kubernetes (ctr).
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name,omitempty"`
	UID       string `json:"uid,omitempty"`
}

// Report is one thing that happened to one pod.
type Report struct {
	// Time is when it happened (the node's clock).
	Time time.Time `json:"time"`
	Kind Kind      `json:"kind"`
	Pod  Pod       `json:"pod"`
	// SandboxID is the containerd ID of the pod's sandbox container.
	SandboxID string `json:"sandboxID"`
	// Policy is the PodSnapshotPolicy's name (in Pod.Namespace).
	Policy string `json:"policy"`
	// Snapshot is the PodSnapshot's name: the snapshot's UUID.
	Snapshot string `json:"snapshot,omitempty"`
	// Scope is the snapshot's scope: whole-pod or rootfs-only (the policy's
	// spec.snapshotScope).
	Scope string `json:"scope,omitempty"`
	// StoragePath is where the snapshot's files are, e.g. "gs://bucket/path/ns/policy/uuid"
	// or "file:///var/lib/podsnapshot/store/ns/policy/uuid".
	StoragePath string `json:"storagePath,omitempty"`
	// Reason is one of the Reason* constants (ColdStart only).
	Reason string `json:"reason,omitempty"`
	// Message is a sentence for people: why a pod started cold, why a checkpoint failed,
	// or how long a restore or checkpoint took.
	Message string `json:"message,omitempty"`
	// Durations of the step reported, in seconds, where known: a restore's total and
	// download, a checkpoint's runsc checkpoint and upload.
	Seconds         float64 `json:"seconds,omitempty"`
	DownloadSeconds float64 `json:"downloadSeconds,omitempty"`
	UploadSeconds   float64 `json:"uploadSeconds,omitempty"`
	// StoredBytes is the snapshot's size in the store (CheckpointCommitted).
	StoredBytes int64 `json:"storedBytes,omitempty"`
	// CacheHit says a restore read the node cache, not the store (Restored).
	CacheHit bool `json:"cacheHit,omitempty"`
}

// Spool is a directory of reports.
type Spool struct {
	// Dir is the spool directory; Write creates it (0700) when missing.
	Dir string
	// Max bounds the reports waiting in Dir (config report_max_files): when Write finds
	// Max or more, it removes the oldest, with a warning each, until one fewer remain, so
	// that a node without an agent does not fill its disk. 0 means no bound.
	Max int
}

// Entry is one report file in a spool.
type Entry struct {
	// Name is the file's base name.
	Name   string
	Report Report
}

// Write stores r as a new file. r.Time is set to now when zero. With Max set, the
// oldest reports beyond Max-1 are removed first (trim). Errors name the spool directory.
func (s Spool) Write(r Report) error {
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("report: encode: %w", err)
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("report spool %s: %w", s.Dir, err)
	}
	if err := s.trim(); err != nil {
		return err
	}
	var suffix [4]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return fmt.Errorf("report: random name: %w", err)
	}
	class := ""
	if r.Kind.EventOnly() {
		class = eventOnlySuffix
	}
	name := fmt.Sprintf("%020d-%s%s.json", r.Time.UnixNano(), hex.EncodeToString(suffix[:]), class)
	tmp, err := os.CreateTemp(s.Dir, ".tmp-")
	if err != nil {
		return fmt.Errorf("report spool %s: %w", s.Dir, err)
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(s.Dir, name))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("report spool %s: write %s: %w", s.Dir, name, err)
	}
	return nil
}

// BadReport is a report file List could not read or decode.
type BadReport struct {
	Path string // the file
	Name string // its base name, for SetAside
	Err  error
}

func (b *BadReport) Error() string { return "report " + b.Path + ": " + b.Err.Error() }
func (b *BadReport) Unwrap() error { return b.Err }

// List returns the spool's reports in the order they were written. A file that cannot
// be read or decoded is returned in bad (a *BadReport each) and left in place; a missing
// directory is an empty spool.
func (s Spool) List() (entries []Entry, bad []error, err error) {
	des, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("report spool %s: %w", s.Dir, err)
	}
	for _, n := range reportNames(des) {
		p := filepath.Join(s.Dir, n)
		data, err := os.ReadFile(p)
		if err != nil {
			bad = append(bad, &BadReport{Path: p, Name: n, Err: err})
			continue
		}
		var r Report
		if err := json.Unmarshal(data, &r); err != nil {
			bad = append(bad, &BadReport{Path: p, Name: n, Err: err})
			continue
		}
		entries = append(entries, Entry{Name: n, Report: r})
	}
	return entries, bad, nil
}

// reportNames returns the names of the report files among des, oldest first: hidden
// files (temporaries, reports moved aside) and anything but regular *.json files are
// not reports.
func reportNames(des []os.DirEntry) []string {
	names := make([]string, 0, len(des))
	for _, de := range des {
		if n := de.Name(); !strings.HasPrefix(n, ".") && strings.HasSuffix(n, ".json") && de.Type().IsRegular() {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// trim removes reports until fewer than s.Max remain, logging a warning for each: the
// agent has not taken them, and without a bound a node without an agent would fill its
// disk. It removes the oldest EventOnly reports first (their loss costs an event), then
// the oldest of the others (a CheckpointCommitted lost this way is repaired by the
// controller's sync, which finds the committed manifest). Shims writing at once may each
// remove one, so a full spool may lose a few more than one report; a report already gone
// is not an error.
func (s Spool) trim() error {
	if s.Max <= 0 {
		return nil
	}
	des, err := os.ReadDir(s.Dir)
	if err != nil {
		return fmt.Errorf("report spool %s: %w", s.Dir, err)
	}
	names := reportNames(des)
	excess := len(names) - (s.Max - 1)
	if excess <= 0 {
		return nil
	}
	drop := make([]string, 0, excess)
	for _, eventOnly := range []bool{true, false} {
		for _, n := range names {
			if len(drop) < excess && strings.HasSuffix(n, eventOnlySuffix+".json") == eventOnly {
				drop = append(drop, n)
			}
		}
	}
	for _, n := range drop {
		if err := s.Remove(n); err != nil {
			return err
		}
		log.L.WithField("report", filepath.Join(s.Dir, n)).Warnf(
			"report spool %s holds %d reports (report_max_files %d): report removed undelivered; is podsnapshot-agent running?",
			s.Dir, len(names), s.Max)
	}
	return nil
}

// SetAside renames report name to "."+why+"-"+name: kept for inspection, no longer
// listed (hidden). Its modification time becomes now, so that PruneSetAside counts its
// age from when it was set aside, not from when it was written.
func (s Spool) SetAside(name, why string) error {
	to := filepath.Join(s.Dir, "."+why+"-"+name)
	if err := os.Rename(filepath.Join(s.Dir, name), to); err != nil {
		return fmt.Errorf("report spool %s: set aside %s: %w", s.Dir, name, err)
	}
	now := time.Now()
	if err := os.Chtimes(to, now, now); err != nil {
		return fmt.Errorf("report spool %s: set aside %s: %w", s.Dir, name, err)
	}
	return nil
}

// PruneSetAside removes the set-aside reports (hidden "."+why+"-*.json" files: SetAside's)
// last modified before before, and then the oldest of the rest until at most max remain
// (max 0: no bound by count). It returns how many it removed; errors name the spool.
// Temporary files of writers (".tmp-*") are left alone.
func (s Spool) PruneSetAside(before time.Time, max int) (int, error) {
	des, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("report spool %s: %w", s.Dir, err)
	}
	type aside struct {
		name string
		mod  time.Time
	}
	var kept []aside
	removed := 0
	var errs []error
	remove := func(name string) {
		if err := s.Remove(name); err != nil {
			errs = append(errs, err)
			return
		}
		removed++
	}
	for _, de := range des {
		n := de.Name()
		if !strings.HasPrefix(n, ".") || strings.HasPrefix(n, ".tmp-") || !strings.HasSuffix(n, ".json") || !de.Type().IsRegular() {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		if fi.ModTime().Before(before) {
			remove(n)
			continue
		}
		kept = append(kept, aside{n, fi.ModTime()})
	}
	if max > 0 && len(kept) > max {
		sort.Slice(kept, func(i, j int) bool { return kept[i].mod.Before(kept[j].mod) })
		for _, a := range kept[:len(kept)-max] {
			remove(a.name)
		}
	}
	return removed, errors.Join(errs...)
}

// Remove deletes a report once it has been handled.
func (s Spool) Remove(name string) error {
	if err := os.Remove(filepath.Join(s.Dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("report spool %s: %w", s.Dir, err)
	}
	return nil
}
