package harness

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
)

func TestMain(m *testing.M) { Main(m) }

// readArchive returns the entries of an OCI archive by name.
func readArchive(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[hdr.Name] = b
	}
}

func blob(t *testing.T, entries map[string][]byte, digest string) []byte {
	t.Helper()
	b, ok := entries["blobs/sha256/"+strings.TrimPrefix(digest, "sha256:")]
	if !ok {
		t.Fatalf("blob %s missing from archive", digest)
	}
	return b
}

// imageView is what a test image archive holds, as ctr import reads it.
type imageView struct {
	Config struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
		Config       struct {
			Entrypoint, Cmd, Env []string
			WorkingDir           string
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	// Files are the headers of the single layer's entries by name ("bin/sh", "tmp/").
	Files map[string]*tar.Header
}

// readImage reads the archive of test image name and checks the layout ctr import
// relies on: oci-layout, index.json with one manifest carrying the name annotations and
// the platform, a manifest with a config and one gzip layer.
func readImage(t *testing.T, name string) imageView {
	t.Helper()
	images := Images(t)
	img, ok := images[name]
	if !ok {
		t.Fatalf("no %s in %v", name, images)
	}
	entries := readArchive(t, img.Archive)
	if string(entries["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %q", entries["oci-layout"])
	}
	var index struct {
		Manifests []struct {
			MediaType   string            `json:"mediaType"`
			Digest      string            `json:"digest"`
			Platform    map[string]string `json:"platform"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(entries["index.json"], &index); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if len(index.Manifests) != 1 {
		t.Fatalf("index has %d manifests, want 1", len(index.Manifests))
	}
	m := index.Manifests[0]
	if m.Digest != img.Digest || m.Platform["os"] != "linux" || m.Platform["architecture"] != goarch() ||
		m.Annotations[ociarchive.AnnotationImageName] != name || m.Annotations[ociarchive.AnnotationRefName] != "latest" {
		t.Errorf("index entry = %+v, want digest %s, linux/%s, names %s and latest", m, img.Digest, goarch(), name)
	}
	var manifest struct {
		Config struct{ Digest string } `json:"config"`
		Layers []struct {
			MediaType string `json:"mediaType"`
			Digest    string `json:"digest"`
		} `json:"layers"`
	}
	if err := json.Unmarshal(blob(t, entries, m.Digest), &manifest); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	var v imageView
	if err := json.Unmarshal(blob(t, entries, manifest.Config.Digest), &v.Config); err != nil {
		t.Fatalf("config: %v", err)
	}
	if v.Config.OS != "linux" || v.Config.Architecture != goarch() || v.Config.Config.WorkingDir != "/" ||
		len(v.Config.Config.Env) == 0 || len(v.Config.RootFS.DiffIDs) != 1 {
		t.Errorf("config = %+v", v.Config)
	}
	if len(manifest.Layers) != 1 || manifest.Layers[0].MediaType != ociarchive.MediaTypeLayerGzip {
		t.Fatalf("layers = %+v", manifest.Layers)
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob(t, entries, manifest.Layers[0].Digest)))
	if err != nil {
		t.Fatal(err)
	}
	v.Files = map[string]*tar.Header{}
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		v.Files[hdr.Name] = hdr
	}
	return v
}

// checkFiles checks that the layer holds each file of want: "" for an executable
// regular file, else a symbolic link to that target.
func checkFiles(t *testing.T, files map[string]*tar.Header, want map[string]string) {
	t.Helper()
	for name, target := range want {
		hdr, ok := files[name]
		switch {
		case !ok:
			t.Errorf("layer lacks %s", name)
		case target == "" && (hdr.Typeflag != tar.TypeReg || hdr.Mode&0o111 == 0):
			t.Errorf("%s: type %c mode %o, want an executable file", name, hdr.Typeflag, hdr.Mode)
		case target != "" && (hdr.Typeflag != tar.TypeSymlink || hdr.Linkname != target):
			t.Errorf("%s: type %c -> %q, want a link to %s", name, hdr.Typeflag, hdr.Linkname, target)
		}
	}
	if hdr := files["tmp/"]; hdr == nil || hdr.Mode != 0o1777 {
		t.Errorf("tmp/ = %+v, want mode 1777", hdr)
	}
}

// TestImages checks the workloads image: the layout ctr import relies on (readImage), a
// config with the command, and a layer holding busybox, its applet links and the
// workloads.
func TestImages(t *testing.T) {
	v := readImage(t, WorkloadsImage)
	if strings.Join(v.Config.Config.Cmd, " ") != "/bin/counter" {
		t.Errorf("command %q, want /bin/counter", v.Config.Config.Cmd)
	}
	checkFiles(t, v.Files, map[string]string{
		"bin/busybox": "", "bin/counter": "", "bin/slowinit": "", "bin/fsinit": "",
		"bin/sh": "busybox", "bin/echo": "busybox", "bin/sleep": "busybox", "bin/wget": "busybox", "bin/nc": "busybox",
	})
	// The files fsinit deletes, modifies and replaces (rootfs-only tests).
	for _, name := range []string{"etc/fsinit/delete-me", "etc/fsinit/modify-me", "etc/fsinit/dir/a", "etc/fsinit/dir/b"} {
		if hdr, ok := v.Files[name]; !ok || hdr.Typeflag != tar.TypeReg {
			t.Errorf("layer lacks the regular file %s", name)
		}
	}
}

// TestPauseImage checks the CRI sandbox image: entrypoint /pause, and nothing of
// busybox or the workloads beside it.
func TestPauseImage(t *testing.T) {
	v := readImage(t, PauseImage)
	if strings.Join(v.Config.Config.Entrypoint, " ") != "/pause" || len(v.Config.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q, command %q: want /pause and none", v.Config.Config.Entrypoint, v.Config.Config.Cmd)
	}
	checkFiles(t, v.Files, map[string]string{"pause": ""})
	for _, name := range []string{"bin/busybox", "bin/sh", "bin/counter"} {
		if _, ok := v.Files[name]; ok {
			t.Errorf("pause image holds %s", name)
		}
	}
}

// TestBuildReproducible: the same spec gives the same bytes, so image digests are stable
// across runs (the snapshot key includes the image digest).
func TestBuildReproducible(t *testing.T) {
	spec := ociarchive.Spec{
		Name:  "podsnapshot.test/repro",
		Files: append(ociarchive.BaseFiles(), ociarchive.File{Path: "/hello", Data: []byte("hi\n")}),
		Cmd:   []string{"cat", "/hello"},
	}
	var a, b bytes.Buffer
	ra, err := ociarchive.Build(&a, spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ociarchive.Build(&b, spec); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two builds of one spec differ")
	}
	if ra.Name != "podsnapshot.test/repro:latest" {
		t.Errorf("name = %q, want the :latest tag added", ra.Name)
	}
	if _, err := ociarchive.Build(io.Discard, ociarchive.Spec{Name: "x", Files: []ociarchive.File{{Path: "rel"}}}); err == nil ||
		!strings.Contains(err.Error(), "rel") {
		t.Errorf("relative path: err = %v, want one naming it", err)
	}
}

// TestImagebuildCommand runs the command-line tool as the docs show it, for the busybox
// and pause presets.
func TestImagebuildCommand(t *testing.T) {
	for preset, name := range map[string]string{"busybox": BusyboxImage, "pause": PauseImage} {
		t.Run(preset, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), preset+".tar")
			cmd := exec.Command("go", "run", "./internal/testenv/imagebuild", "-o", out, "-preset", preset, "-busybox", Busybox(t))
			cmd.Dir = RepoRoot(t)
			b, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %v\n%s", cmd, err, b)
			}
			if !strings.Contains(string(b), name) {
				t.Fatalf("output %q does not name %s", b, name)
			}
			// The presets are deterministic too (pause compiled with -trimpath): the tool
			// and the library agree.
			if got, want := strings.Fields(string(b))[2], Images(t)[name].Digest; got != want {
				t.Errorf("digest from the tool %s, from the library %s", got, want)
			}
		})
	}
}

// TestWorkloadsOnHost runs the workloads outside any sandbox: their output format is
// what the e2e tests match on. Outside gVisor the checkpoint file does not exist, so the
// result must be "error" and the workload must keep running.
func TestWorkloadsOnHost(t *testing.T) {
	t.Run("counter", func(t *testing.T) {
		out := runFor(t, 2*time.Second, Workload(t, "counter"), "-interval", "50ms", "5")
		if !strings.HasPrefix(out, "count 5\ncount 6\ncount 7\n") {
			t.Errorf("output %q, want count 5, 6, 7, ...", out)
		}
	})
	t.Run("slowinit", func(t *testing.T) {
		start := time.Now()
		out := runFor(t, 3*time.Second, Workload(t, "slowinit"), "-mib", "4", "-seconds", "1", "-checkpoint", "-interval", "100ms")
		for _, want := range []string{"slowinit: filling 4 MiB over 1s\nready 20", "checkpoint result: error\nmemory ok\ncount 0\ncount 1\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("output %q lacks %q", out, want)
			}
		}
		line := strings.SplitN(strings.SplitN(out, "ready ", 2)[1], "\n", 2)[0]
		ready, err := time.Parse(time.RFC3339Nano, line)
		if err != nil || ready.Sub(start) < 900*time.Millisecond {
			t.Errorf("ready time %q (%v): want a timestamp about 1s after start %v", line, err, start)
		}
	})
}

// TestPauseOnHost runs the pause program outside any sandbox: it keeps running, and
// SIGTERM makes it exit 0, as a sandbox container must for a clean StopPodSandbox.
func TestPauseOnHost(t *testing.T) {
	cmd := exec.Command(Workload(t, "pause"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("pause exited on its own: %v\n%s", err, stderr.String())
	case <-time.After(500 * time.Millisecond):
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("pause after SIGTERM: %v, want exit 0\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("pause did not exit within 10s of SIGTERM")
	}
}

// runFor runs a command for d, then kills it, and returns its stdout.
func runFor(t *testing.T, d time.Duration, name string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(d)
	cmd.Process.Kill()
	cmd.Wait()
	t.Logf("%s stderr: %s", filepath.Base(name), stderr.String())
	return stdout.String()
}
