package main

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
)

// concurrentRun is n restores of one snapshot on one node, started at once with the node
// cache empty: how long each took and how much of the pages file their shims downloaded
// together.
type concurrentRun struct {
	toReady      []time.Duration // each: ctr run invoked -> "checkpoint result: restore"
	parts        []string        // each: the shim's download and runsc restore parts, for the log
	streamed     int             // shims whose pages streamed (the others found the node cache)
	fetchedBytes int64           // stored bytes of pages.img the shims fetched, summed
	downloads    float64         // fetchedBytes / the pages file's stored size
}

func (c *concurrentRun) median() time.Duration {
	s := slices.Clone(c.toReady)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (c *concurrentRun) slowest() time.Duration { return slices.Max(c.toReady) }

// concurrentRestores starts n `ctr run`s of the same restore at once (ctr run options
// opts), waits for each to be back and to have read its memory back, then for the line
// each streaming shim logs at the end of its stream, and removes them.
func concurrentRestores(ctx context.Context, l *lab.Lab, prefix string, opts, command []string, uuid string, pagesStored int64, n int) (*concurrentRun, error) {
	from := len(l.Log().Lines())
	tasks := make([]*lab.Task, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tasks[i], errs[i] = l.RunWith(ctx, fmt.Sprintf("%s-conc%d", prefix, i+1), opts, command...)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err // Close removes the others
		}
	}
	c := &concurrentRun{}
	for _, t := range tasks {
		// Each task's output is followed in the background, so these waits, one after
		// another, do not shift the times.
		back, err := l.WaitOutput(ctx, t, 5*time.Minute, `"checkpoint result" line`, func(s string) bool { return strings.HasPrefix(s, "checkpoint result: ") })
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t.ID, err)
		}
		_, d, _ := l.ShimLine(ctx, 10*time.Second, t.ID, "decision=")
		if !strings.HasSuffix(back.Text, ": restore") {
			return nil, fmt.Errorf("%s: the workload read %q: it started cold; the shim said: %s", t.ID, back.Text, d.Msg)
		}
		c.toReady = append(c.toReady, back.Seen.Sub(t.Invoked))
		if streamedDecision(d.Msg) {
			c.streamed++
		}
	}
	for i, t := range tasks {
		mem, err := l.WaitOutput(ctx, t, 5*time.Minute, "memory check", func(s string) bool { return strings.HasPrefix(s, "memory ") })
		if err != nil {
			return nil, fmt.Errorf("%s: %w; containerd's log of it:\n%s", t.ID, err, taskLog(l, from, t.ID))
		}
		if mem.Text != "memory ok" {
			return nil, fmt.Errorf("%s: restored memory: %s", t.ID, mem.Text)
		}
		line, _, err := l.ShimLine(ctx, 30*time.Second, t.ID, "podsnapshot: restored")
		if err != nil {
			return nil, err
		}
		if m := restoredRE.FindStringSubmatch(lab.ParseLogEntry(line.Text).Msg); m != nil {
			c.parts = append(c.parts, fmt.Sprintf("%.2fs (download %s ms, runsc restore %s ms)", c.toReady[i].Seconds(), m[2], m[3]))
		}
	}
	if c.streamed > 0 {
		lines, err := waitFetched(ctx, l, from, c.streamed, uuid)
		if err != nil {
			return nil, err
		}
		for _, line := range lines {
			b := lab.ParseLogEntry(line).Int("fetched_bytes")
			if b < 0 {
				return nil, fmt.Errorf("no fetched_bytes in the shim's line: %s", line)
			}
			c.fetchedBytes += b
		}
	}
	c.downloads = float64(c.fetchedBytes) / float64(pagesStored)
	for _, t := range tasks {
		if err := l.Remove(ctx, t.ID); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// streamedDecision says whether a shim's restore decision streams pages.img.
func streamedDecision(msg string) bool { return strings.Contains(msg, "pages.img streams") }

// adoptedDecision says whether a shim's decision line says its restore verified the local
// store's own files whole, in memory, and kept them as the node cache entry
// (stream.Image.Adopted) instead of streaming them.
func adoptedDecision(msg string) bool { return strings.Contains(msg, "verified whole") }

// waitFetched waits for n of the lines the shims log at the end of streaming snapshot
// uuid's pages ("... frames fetched by this shim ...", logged without the container's
// id), among containerd's log lines after the first from, and returns them.
func waitFetched(ctx context.Context, l *lab.Lab, from, n int, uuid string) ([]string, error) {
	var got []string
	i := 0
	// Wait hands every line to match once, in order, from the first.
	_, err := l.Log().Wait(ctx, 5*time.Minute, fmt.Sprintf("%d shim lines on the pages of %s fetched", n, uuid), func(s string) bool {
		i++
		if i <= from || !strings.Contains(s, "fetched by this shim") || !strings.Contains(s, "/"+uuid+"/") {
			return false
		}
		got = append(got, s)
		return len(got) == n
	})
	return got, err
}

// pagesStoredSize reads snapshot uuid's manifest (podsnapshot inspect) and returns the
// stored size of its pages file.
func pagesStoredSize(ctx context.Context, l *lab.Lab, uuid string) (int64, error) {
	out, err := l.CLI(ctx, "inspect", "-n", l.Namespace, uuid)
	if err != nil {
		return 0, err
	}
	// Two YAML documents: the PodSnapshot view, then the manifest.
	docs := strings.Split(out, "\n---\n")
	var m manifest.Manifest
	if err := yaml.Unmarshal([]byte(docs[len(docs)-1]), &m); err != nil {
		return 0, fmt.Errorf("manifest of %s: %w", uuid, err)
	}
	for _, f := range m.Files {
		if strings.TrimSuffix(path.Base(f.Name), ".zst") == "pages.img" && f.StoredSize > 0 {
			return f.StoredSize, nil
		}
	}
	return 0, fmt.Errorf("manifest of %s: no pages.img among %d files", uuid, len(m.Files))
}

// emptyNodeCache removes the entries of the lab's node cache (<work dir>/cache): only
// directories named by a cache key that hold the cache's marker, while no shim uses them.
func emptyNodeCache(l *lab.Lab) error {
	dir := filepath.Join(l.WorkDir, "cache")
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.IsDir() || !cache.ValidKey(e.Name()) {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, e.Name(), cache.EntryMarker)); err != nil {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("empty the node cache: %w", err)
		}
	}
	return nil
}

// writeConfigWith writes, beside the lab's shim config, a copy named name that also sets
// the top-level key to value (a TOML literal), and returns its path. The key must not be
// set already.
func writeConfigWith(l *lab.Lab, name, key, value string) (string, error) {
	b, err := os.ReadFile(l.ShimConfig)
	if err != nil {
		return "", err
	}
	if strings.Contains(string(b), key) {
		return "", fmt.Errorf("%s already sets %s", l.ShimConfig, key)
	}
	p := filepath.Join(l.Dir, name)
	// A top-level key: before the first table.
	return p, os.WriteFile(p, append([]byte(key+" = "+value+"\n"), b...), 0o644)
}

// writeWholeConfig writes a copy of the lab's shim config with stream_restore = false: a
// restore through it downloads and verifies the whole snapshot into the node cache
// before runsc restores. It returns its path.
func writeWholeConfig(l *lab.Lab) (string, error) {
	return writeConfigWith(l, "podsnapshot-whole.toml", "stream_restore", "false")
}

// writeBufferedConfig writes a copy of the lab's shim config with restore_direct =
// false: a restore from the node cache through it reads pages.img through the page
// cache, without `runsc restore --direct`. It returns its path.
func writeBufferedConfig(l *lab.Lab) (string, error) {
	return writeConfigWith(l, "podsnapshot-buffered.toml", "restore_direct", "false")
}

// taskLog is what containerd's log (the shims' lines included) says of container id
// after line from, but its debug lines: the last 40, for an error message.
func taskLog(l *lab.Lab, from int, id string) string {
	var out []string
	lines := l.Log().Lines()
	for _, s := range lines[min(from, len(lines)):] {
		if strings.Contains(s.Text, id) && !strings.Contains(s.Text, "level=debug") {
			out = append(out, s.Text)
		}
	}
	return strings.Join(out[max(0, len(out)-40):], "\n")
}
