package ociarchive

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// Images of real programs from Debian packages (redis-server, python3, nginx-light), each
// with busybox for sh, wget and nc, and a wrapper that checkpoints the sandbox once the
// program is ready (see testdata/workloads). They need the Debian packages installed on
// the host (`make deps`); HostFiles copies the programs with their shared-library
// closure.
const (
	// RedisImage holds redis-server and redis-cli. Default command:
	// /bin/redis-snapshot 1000000 (populate, print "ready N keys", checkpoint, serve).
	RedisImage = "podsnapshot.test/redis:latest"
	// PythonImage holds python3 with its standard library. Default command:
	// python3 /app/bigstate.py 200 (import, build 200 MiB, print "ready ...", checkpoint).
	PythonImage = "podsnapshot.test/python:latest"
	// NginxImage holds nginx serving a static page with four workers. Default command:
	// /bin/nginx-snapshot (start, print "ready", checkpoint, serve).
	NginxImage = "podsnapshot.test/nginx:latest"
)

// AppImages are the presets of the real-program images, by short name.
var AppImages = map[string]string{"redis": RedisImage, "python": PythonImage, "nginx": NginxImage, "torch": TorchImage}

// workloadFile is a file of testdata/workloads (relative path) at path in the image.
func workloadFile(repoRoot, rel, imagePath string, mode fs.FileMode) (File, error) {
	src := filepath.Join(repoRoot, "testdata", "workloads", filepath.FromSlash(rel))
	if _, err := os.Stat(src); err != nil {
		return File{}, fmt.Errorf("workload file: %w", err)
	}
	return File{Path: imagePath, Mode: mode, Source: src}, nil
}

// wfile is a file of testdata/workloads (Rel, slash-separated) at Path in an image.
type wfile struct {
	Rel, Path string
	Mode      fs.FileMode
}

// appSpec is BusyboxSpec plus the host bundle, /bin/gvisor-checkpoint, the workload
// files and extra files (which win over the others, e.g. for /etc/passwd).
func appSpec(busybox, repoRoot, name string, bundle HostBundle, extra []File, files ...wfile) (Spec, error) {
	spec, err := BusyboxSpec(busybox)
	if err != nil {
		return Spec{}, err
	}
	spec.Name = name
	host, err := HostFiles(bundle)
	if err != nil {
		return Spec{}, fmt.Errorf("%s: %w", name, err)
	}
	spec.Files = append(spec.Files, host...)
	files = append(files, wfile{"checkpoint/gvisor-checkpoint.sh", "/bin/gvisor-checkpoint", 0o755})
	for _, w := range files {
		f, err := workloadFile(repoRoot, w.Rel, w.Path, w.Mode)
		if err != nil {
			return Spec{}, fmt.Errorf("%s: %w", name, err)
		}
		spec.Files = append(spec.Files, f)
	}
	spec.Files = append(spec.Files, extra...)
	return spec, nil
}

// RedisSpec is the spec of RedisImage; repoRoot is the podsnapshot repository (for
// testdata/workloads).
func RedisSpec(busybox, repoRoot string) (Spec, error) {
	spec, err := appSpec(busybox, repoRoot, RedisImage,
		HostBundle{Programs: []string{"/usr/bin/redis-server", "/usr/bin/redis-cli"}},
		[]File{{Path: "/data", Mode: fs.ModeDir | 0o755}},
		wfile{"redis/redis-snapshot.sh", "/bin/redis-snapshot", 0o755})
	if err != nil {
		return Spec{}, err
	}
	spec.WorkingDir = "/data"
	spec.Cmd = []string{"/bin/redis-snapshot", "1000000"}
	return spec, nil
}

// PythonSpec is the spec of PythonImage: /usr/bin/python3 and the standard library of
// its version (Debian 12: /usr/lib/python3.11 and /etc/python3.11), without the files
// for building extensions.
func PythonSpec(busybox, repoRoot string) (Spec, error) {
	target, err := os.Readlink("/usr/bin/python3")
	if err != nil {
		return Spec{}, fmt.Errorf("%s: /usr/bin/python3 (Debian package python3): %w", PythonImage, err)
	}
	version := filepath.Base(target) // python3.11
	if !strings.HasPrefix(version, "python3.") {
		return Spec{}, fmt.Errorf("%s: /usr/bin/python3 links to %s, want python3.N", PythonImage, target)
	}
	spec, err := appSpec(busybox, repoRoot, PythonImage,
		HostBundle{
			Programs: []string{"/usr/bin/python3"},
			Dirs: []HostDir{
				// The static library and build files are for compiling extensions.
				{Path: "/usr/lib/" + version, Exclude: []string{"config-" + strings.TrimPrefix(version, "python") + "-" + multiarch()}},
				// sitecustomize.py in the standard library is a link to here.
				{Path: "/etc/" + version},
			},
		},
		nil,
		wfile{"python/bigstate.py", "/app/bigstate.py", 0o644})
	if err != nil {
		return Spec{}, err
	}
	spec.Env = append(append([]string{}, DefaultEnv...), "LANG=C.UTF-8", "PYTHONUNBUFFERED=1")
	spec.WorkingDir = "/app"
	spec.Cmd = []string{"/usr/bin/python3", "/app/bigstate.py", "200"}
	return spec, nil
}

// NginxSpec is the spec of NginxImage: nginx runs as www-data (in /etc/passwd and
// /etc/group), with its pid file in /run and temporary files in /var/lib/nginx.
func NginxSpec(busybox, repoRoot string) (Spec, error) {
	dir := func(p string) File { return File{Path: p, Mode: fs.ModeDir | 0o755} }
	spec, err := appSpec(busybox, repoRoot, NginxImage,
		HostBundle{Programs: []string{"/usr/sbin/nginx"}},
		[]File{
			dir("/var/lib/nginx"), dir("/var/log/nginx"), dir("/var/lock"), dir("/var/www/html"),
			{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\n" +
				"www-data:x:33:33:www-data:/var/www:/bin/false\n" +
				"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
			{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nwww-data:x:33:\nnobody:x:65534:\n")},
		},
		wfile{"nginx/nginx-snapshot.sh", "/bin/nginx-snapshot", 0o755},
		wfile{"nginx/nginx.conf", "/etc/nginx/nginx.conf", 0o644},
		wfile{"nginx/index.html", "/var/www/html/index.html", 0o644})
	if err != nil {
		return Spec{}, err
	}
	spec.Cmd = []string{"/bin/nginx-snapshot"}
	return spec, nil
}

// AppSpec returns the spec of the real-program image with the short name redis, python,
// nginx or torch (see torch.go).
func AppSpec(short, busybox, repoRoot string) (Spec, error) {
	switch short {
	case "redis":
		return RedisSpec(busybox, repoRoot)
	case "python":
		return PythonSpec(busybox, repoRoot)
	case "nginx":
		return NginxSpec(busybox, repoRoot)
	case "torch":
		return TorchSpec(busybox, repoRoot)
	}
	return Spec{}, fmt.Errorf("no image %q: want redis, python, nginx or torch", short)
}

// multiarch is Debian's multiarch tuple of the host, as in /usr/lib/x86_64-linux-gnu.
func multiarch() string {
	switch runtime.GOARCH {
	case "arm64":
		return "aarch64-linux-gnu"
	default:
		return "x86_64-linux-gnu"
	}
}
