package nodeinstall

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// contents is a listing of files by path with their content and mode, not their inodes.
func contents(t *testing.T, root string) map[string]fileInfo {
	files := listFiles(t, root)
	for p, f := range files {
		files[p] = fileInfo{content: f.content, mode: f.mode}
	}
	return files
}

// TestUninstallAfterInstall: install then uninstall leaves the host's files exactly as
// they were (the node's own files included), the label removed, and containerd restarted
// once more, no longer serving the handler.
func TestUninstallAfterInstall(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string // host files before install
	}{
		{"bare host", map[string]string{"/etc/hostname": "node-1\n"}},
		{"node's own containerd config", map[string]string{
			"/etc/containerd/config.toml":          "version = 2\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n",
			"/etc/containerd/conf.d/registry.toml": "# another drop-in\n",
			"/usr/local/bin/crictl":                "crictl\n",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHost(t)
			for p, c := range tc.files {
				writeFile(t, h.path(p), c, 0o644)
			}
			before := contents(t, h.root)
			if _, err := Install(context.Background(), h.opts); err != nil {
				t.Fatal(err)
			}
			res, err := Uninstall(context.Background(), h.opts)
			if err != nil {
				t.Fatal(err)
			}
			if after := contents(t, h.root); !reflect.DeepEqual(before, after) {
				t.Errorf("host files after uninstall differ:\nbefore %v\nafter  %v", before, after)
			}
			if _, ok := h.label(); ok || h.labels.removes != 1 {
				t.Errorf("label still set (%d removals)", h.labels.removes)
			}
			if n := h.ctrd.restartCount(); n != 2 || !res.Restarted {
				t.Errorf("%d restarts in all, want install's and uninstall's", n)
			}
			if served, _ := h.ctrd.Serves(context.Background(), "podsnapshot"); served {
				t.Error("containerd still serves the handler")
			}
			if len(res.Kept) != 0 {
				t.Errorf("kept %q", res.Kept)
			}
			if !strings.Contains(h.log.String(), "uninstall complete: changed: containerd drop-in /etc/containerd/conf.d/podsnapshot-cri.toml (removed), binary /usr/local/bin/podsnapshot-shimd (removed), binary /usr/local/bin/containerd-shim-podsnapshot-v1 (removed)") {
				t.Errorf("no summary line in the log:\n%s", h.log)
			}

			// Again: nothing left to do, nothing restarted.
			res, err = Uninstall(context.Background(), h.opts)
			if err != nil || len(res.Changed) != 0 || h.ctrd.restartCount() != 2 {
				t.Errorf("second uninstall: %v, changed %q, %d restarts", err, res.Changed, h.ctrd.restartCount())
			}
		})
	}
}

// TestUninstallKeepsUserFiles: a shim config the user edited and a binary that is not
// the image's stay, each named in Kept.
func TestUninstallKeepsUserFiles(t *testing.T) {
	h := newTestHost(t)
	if _, err := Install(context.Background(), h.opts); err != nil {
		t.Fatal(err)
	}
	writeFile(t, h.path("/etc/containerd/podsnapshot.toml"), "log_level = \"debug\"\n", 0o644)
	writeFile(t, h.path("/usr/local/bin/runsc"), "a runsc built by hand\n", 0o755)
	res, err := Uninstall(context.Background(), h.opts)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"binary /usr/local/bin/runsc", "shim config /etc/containerd/podsnapshot.toml"}
	if !slices.Equal(res.Kept, want) {
		t.Errorf("kept %q, want %q", res.Kept, want)
	}
	if got := readFile(t, h.path("/etc/containerd/podsnapshot.toml")); got != "log_level = \"debug\"\n" {
		t.Errorf("shim config = %q", got)
	}
	if got := readFile(t, h.path("/usr/local/bin/runsc")); got != "a runsc built by hand\n" {
		t.Errorf("runsc = %q", got)
	}
	for _, gone := range []string{"/usr/local/bin/podsnapshot", "/etc/containerd/config.toml", "/etc/containerd/conf.d/podsnapshot-cri.toml"} {
		if _, err := os.Stat(h.path(gone)); !os.IsNotExist(err) {
			t.Errorf("%s: %v, want removed", gone, err)
		}
	}
	if !strings.Contains(h.log.String(), "shim config /etc/containerd/podsnapshot.toml: left in place: its content is not what install wrote") {
		t.Errorf("no warning for the shim config:\n%s", h.log)
	}
}

// TestUninstallRefusesRunningShims: while a shim runs Uninstall changes nothing and
// names it; Force goes on.
func TestUninstallRefusesRunningShims(t *testing.T) {
	h := newTestHost(t)
	if _, err := Install(context.Background(), h.opts); err != nil {
		t.Fatal(err)
	}
	installed := listFiles(t, h.root)
	h.opts.Processes = fakeProcs{{PID: 4242, ID: "sandbox-a"}, {PID: 4343, ID: "sandbox-b"}}
	_, err := Uninstall(context.Background(), h.opts)
	if err == nil || !strings.Contains(err.Error(), "2 podsnapshot shims still run (pid 4242 -id sandbox-a, pid 4343 -id sandbox-b)") {
		t.Fatalf("err = %v", err)
	}
	if after := listFiles(t, h.root); !reflect.DeepEqual(installed, after) {
		t.Error("files changed although uninstall refused")
	}
	if _, ok := h.label(); !ok || h.ctrd.restartCount() != 1 {
		t.Errorf("label %t, %d restarts; want the install's only", ok, h.ctrd.restartCount())
	}

	h.opts.Force = true
	if _, err := Uninstall(context.Background(), h.opts); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h.ctrd.dropin); !os.IsNotExist(err) {
		t.Errorf("drop-in after a forced uninstall: %v", err)
	}
}

// TestProcShims finds shims by argv[0]'s base name and reads their -id.
func TestProcShims(t *testing.T) {
	proc := t.TempDir()
	for pid, argv := range map[string][]string{
		"812":  {"/usr/local/bin/containerd-shim-podsnapshot-v1", "-namespace", "k8s.io", "-id", "abc123", "-address", "/run/containerd/containerd.sock"},
		"77":   {"containerd-shim-podsnapshot-v1", "--id=def456"},
		"90":   {"/usr/bin/containerd-shim-runc-v2", "-namespace", "k8s.io", "-id", "runc1"},
		"91":   {"/bin/sh", "-c", "containerd-shim-podsnapshot-v1 -id x"},
		"92":   {"/usr/local/bin/containerd-shim-podsnapshot-v1-old", "-id", "y"},
		"self": {"containerd-shim-podsnapshot-v1", "-id", "not-a-pid"},
	} {
		writeFile(t, filepath.Join(proc, pid, "cmdline"), strings.Join(argv, "\x00")+"\x00", 0o444)
	}
	if err := os.Mkdir(filepath.Join(proc, "93"), 0o755); err != nil { // exited meanwhile
		t.Fatal(err)
	}
	shims, err := ProcShims{ProcRoot: proc}.Shims()
	if err != nil {
		t.Fatal(err)
	}
	if want := []Shim{{PID: 77, ID: "def456"}, {PID: 812, ID: "abc123"}}; !reflect.DeepEqual(shims, want) {
		t.Errorf("shims %+v, want %+v", shims, want)
	}
}
