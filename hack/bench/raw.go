package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
	"github.com/podsnapshot/podsnapshot/storage"
)

// rawRunsc runs the same runsc binary directly, without containerd or the shim, from
// bundles of the lab's workloads image. Everything lives below the lab's directory, so
// the lab's Close reaps any sandbox left over and unmounts runsc's null-netns.
type rawRunsc struct {
	bin    string
	images string   // checkpoint images, kept across labs (outside the lab's directory)
	root   string   // --root
	dir    string   // bundles, images, outputs
	rootfs string   // the image's root filesystem, shared by the bundles
	env    []string // the process environment of the bundles (nil: runsc spec's)
	flags  []string // runsc flags before the command, as the shim config's [runsc.flags]
	n      int      // container counter, for unique IDs
}

func newRawRunsc(l *lab.Lab, images string) (*rawRunsc, error) {
	if l.ImageArchive == "" {
		return nil, fmt.Errorf("the lab has no image archive")
	}
	r := &rawRunsc{bin: filepath.Join(l.DepsBin, "runsc"), dir: filepath.Join(l.Dir, "raw"), images: images}
	r.root = filepath.Join(r.dir, "runsc")
	r.rootfs = filepath.Join(r.dir, "rootfs")
	if err := os.MkdirAll(r.root, 0o755); err != nil {
		return nil, err
	}
	if err := ociarchive.ExtractRootfs(l.ImageArchive, r.rootfs); err != nil {
		return nil, fmt.Errorf("root filesystem for runsc: %w", err)
	}
	return r, nil
}

// bundle writes a bundle named name whose process runs args on the shared root
// filesystem, with annotations added to `runsc spec`'s defaults.
func (r *rawRunsc) bundle(name string, ann map[string]string, args ...string) (string, error) {
	b := filepath.Join(r.dir, "bundle-"+name)
	if err := os.MkdirAll(b, 0o755); err != nil {
		return "", err
	}
	if err := os.Remove(filepath.Join(b, "config.json")); err != nil && !os.IsNotExist(err) {
		return "", err // runsc spec will not overwrite it
	}
	if out, err := exec.Command(r.bin, append([]string{"spec", "--bundle", b, "--"}, args...)...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("runsc spec: %v: %s", err, out)
	}
	path := filepath.Join(b, "config.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var spec map[string]any
	if err := json.Unmarshal(raw, &spec); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	proc, _ := spec["process"].(map[string]any)
	if proc == nil {
		return "", fmt.Errorf("%s: no process", path)
	}
	proc["terminal"] = false // output to a file, as the shim's file:// log
	if r.env != nil {
		proc["env"] = r.env
	}
	// Writable root, as containerd gives it (runsc overlays it in memory either way).
	spec["root"] = map[string]any{"path": r.rootfs, "readonly": false}
	if len(ann) > 0 {
		a, _ := spec["annotations"].(map[string]any)
		if a == nil {
			a = map[string]any{}
		}
		for k, v := range ann {
			a[k] = v
		}
		spec["annotations"] = a
	}
	if raw, err = json.MarshalIndent(spec, "", "  "); err == nil {
		err = os.WriteFile(path, raw, 0o644)
	}
	return b, err
}

// command is `runsc --root R --log B/runsc.log --log-format=json args...`, as the shim
// runs it (it logs to the bundle too), its output to out.
func (r *rawRunsc) command(ctx context.Context, bundle string, out *os.File, args ...string) *exec.Cmd {
	all := append([]string{"--root=" + r.root, "--log=" + filepath.Join(bundle, "runsc.log"), "--log-format=json"}, r.flags...)
	all = append(all, args...)
	cmd := exec.CommandContext(ctx, r.bin, all...)
	cmd.Dir = bundle
	cmd.SysProcAttr = ownGroupAttr()
	if out != nil {
		cmd.Stdout, cmd.Stderr = out, out
	}
	return cmd
}

func (r *rawRunsc) run(ctx context.Context, bundle string, out *os.File, args ...string) error {
	cmd := r.command(ctx, bundle, out, args...)
	var buf bytes.Buffer
	if out == nil {
		cmd.Stdout, cmd.Stderr = &buf, &buf
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("runsc %s: %v: %s%s", strings.Join(args, " "), err, strings.TrimSpace(buf.String()),
			lastLogError(filepath.Join(bundle, "runsc.log")))
	}
	return nil
}

// lastLogError returns the last line of runsc's log that mentions an error, for messages.
func lastLogError(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], `"level":"warning"`) || strings.Contains(lines[i], "rror") {
			return "; runsc log: " + lines[i]
		}
	}
	return ""
}

func (r *rawRunsc) delete(id, bundle string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = r.run(ctx, bundle, nil, "delete", "--force", id)
}

// output creates the output file of a container and follows it.
func (r *rawRunsc) output(id string) (*os.File, *lab.Tail, error) {
	path := filepath.Join(r.dir, "out-"+id+".log")
	f, err := os.Create(path)
	if err != nil {
		return nil, nil, err
	}
	return f, lab.Follow(path), nil
}

func (r *rawRunsc) nextID(prefix string) string {
	r.n++
	return fmt.Sprintf("%s-%d", prefix, r.n)
}

// rawImage is a checkpoint image runsc wrote uncompressed, and how it got there.
type rawImage struct {
	dir         string
	bytes       int64
	coldToReady time.Duration // runsc run -> "ready" (no shim, no containerd)
	saveTook    time.Duration // "ready" (the workload triggers right after) -> "checkpoint result: resume"
	command     []string
}

// checkpoint runs the workload command (slowinit, the model server) with `runsc run
// --detach`, the bundle carrying the same workload-trigger annotations the shim sets
// (uncompressed image, resume), into the image directory image-<name>, waits for its
// "ready" line (up to seconds plus 3 minutes) and its own checkpoint, and deletes the
// container.
func (r *rawRunsc) checkpoint(ctx context.Context, name string, seconds float64, command []string) (*rawImage, error) {
	img := filepath.Join(r.images, "image-"+name)
	if err := os.MkdirAll(img, 0o700); err != nil {
		return nil, err
	}
	b, err := r.bundle("cold-"+name, map[string]string{
		"dev.gvisor.internal.checkpoint.path":        img,
		"dev.gvisor.internal.checkpoint.enable":      "true",
		"dev.gvisor.internal.checkpoint.resume":      "true",
		"dev.gvisor.internal.checkpoint.compression": "none",
	}, command...)
	if err != nil {
		return nil, err
	}
	id := r.nextID("raw-cold-" + name)
	out, tail, err := r.output(id)
	if err != nil {
		return nil, err
	}
	defer tail.Close()
	defer out.Close()
	t0 := time.Now()
	if err := r.run(ctx, b, out, "run", "--detach", "--bundle", b, id); err != nil {
		r.delete(id, b)
		return nil, err
	}
	defer r.delete(id, b)
	initTimeout := time.Duration(seconds*float64(time.Second)) + 3*time.Minute
	ready, err := tail.Wait(ctx, initTimeout, `"ready" line`, func(s string) bool { return strings.HasPrefix(s, "ready ") })
	if err != nil {
		return nil, fmt.Errorf("runsc cold start: %w\n%s", err, tail.Text())
	}
	res, err := tail.Wait(ctx, 10*time.Minute, `"checkpoint result" line`, func(s string) bool { return strings.HasPrefix(s, "checkpoint result: ") })
	if err != nil {
		return nil, fmt.Errorf("runsc checkpoint: %w", err)
	}
	if !strings.HasSuffix(res.Text, ": resume") {
		return nil, fmt.Errorf("runsc checkpoint: the workload read %q, want resume", res.Text)
	}
	size, err := dirBytes(img)
	if err != nil {
		return nil, err
	}
	return &rawImage{dir: img, bytes: size, coldToReady: ready.Seen.Sub(t0), saveTook: res.Seen.Sub(ready.Seen), command: command}, nil
}

// restore times `runsc create` + `runsc restore --detach` from the uncompressed image
// until the restored workload prints its restore line, and deletes the container. With
// background it passes --background, as the shim does. It returns that time and the
// time to "memory ok".
func (r *rawRunsc) restore(ctx context.Context, mib int, img *rawImage, background bool) (toReady, toMemOK time.Duration, err error) {
	// From the page cache (the image read once first), as the shim restores a node-cache
	// entry it has just written.
	return r.restoreRead(ctx, mib, img, img.dir, pagesRead{foreground: !background})
}

// plain times `runsc run` of a bundle printing "ready" until that line is seen.
func (r *rawRunsc) plain(ctx context.Context, b string) (time.Duration, error) {
	id := r.nextID("raw-plain")
	out, tail, err := r.output(id)
	if err != nil {
		return 0, err
	}
	defer tail.Close()
	defer out.Close()
	defer r.delete(id, b)
	t0 := time.Now()
	cmd := r.command(ctx, b, out, "run", "--bundle", b, id)
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	line, werr := tail.Wait(ctx, time.Minute, `"ready" line`, func(s string) bool { return s == "ready" })
	if err := cmd.Wait(); err != nil && werr == nil {
		werr = fmt.Errorf("runsc run: %v%s", err, lastLogError(filepath.Join(b, "runsc.log")))
	}
	if werr != nil {
		return 0, werr
	}
	return line.Seen.Sub(t0), nil
}

// compressImage compresses every file of the image with the codec the shim uploads with
// (storage.Zstd's defaults) into io.Discard, in this process; it returns raw bytes,
// compressed bytes, the time and this process's CPU time meanwhile.
func compressImage(dir string) (raw, stored int64, took, cpu time.Duration, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	cpu0 := selfCPU()
	t0 := time.Now()
	defer func() { took, cpu = time.Since(t0), selfCPU()-cpu0 }()
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return 0, 0, 0, 0, err
		}
		cw := &countWriter{}
		w, err := storage.Zstd{}.NewWriter(cw)
		if err != nil {
			f.Close()
			return 0, 0, 0, 0, err
		}
		n, err := io.Copy(w, f)
		f.Close()
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return 0, 0, 0, 0, err
		}
		raw += n
		stored += cw.n
	}
	return raw, stored, 0, 0, nil
}

// selfCPU is this process's user plus system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func trimNUL(s string) string { return strings.TrimLeft(s, "\x00") }

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// dirBytesRead reads every file of dir once, to bring it into the page cache.
func dirBytesRead(dir string) (int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var n int64
	buf := make([]byte, 1<<20)
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return n, err
		}
		k, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
		f.Close()
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func dirBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	return n, err
}
