package nodeinstall

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/deploy"
	"github.com/podsnapshot/podsnapshot/internal/config"
)

// TestInstallEmptyHost: on a bare host root Install puts every file in place, restarts
// containerd once and labels the node; a second run rewrites nothing (same inodes and
// mtimes) and restarts nothing.
func TestInstallEmptyHost(t *testing.T) {
	h := newTestHost(t)
	h.ctrd.downPolls = 3 // containerd answers only a few polls after its restart
	res, err := Install(context.Background(), h.opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range Binaries {
		p := h.path("/usr/local/bin/" + name)
		if got, want := readFile(t, p), readFile(t, filepath.Join(h.src, name)); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: mode %v (%v), want 0755", p, fi.Mode(), err)
		}
	}
	shimCfg := readFile(t, h.path("/etc/containerd/podsnapshot.toml"))
	if cfg, err := config.Parse([]byte(shimCfg)); err != nil {
		t.Errorf("shim config written: %v", err)
	} else if !reflect.DeepEqual(cfg, config.Default()) {
		t.Errorf("shim config written means %+v, want the defaults", cfg)
	}
	cri, err := deploy.ParseCRI([]byte(readFile(t, h.path("/etc/containerd/conf.d/podsnapshot-cri.toml"))))
	if err != nil {
		t.Fatal(err)
	}
	if got := cri.Plugins.Runtime.Containerd.Runtimes["podsnapshot"].Options.ConfigPath; got != "/etc/containerd/podsnapshot.toml" {
		t.Errorf("drop-in ConfigPath = %q", got)
	}
	ctrdCfg := readFile(t, h.path("/etc/containerd/config.toml"))
	if !strings.Contains(ctrdCfg, "version = 3\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n") {
		t.Errorf("containerd config created:\n%s", ctrdCfg)
	}
	if n := h.ctrd.restartCount(); n != 1 || !res.Restarted {
		t.Errorf("%d restarts (Restarted %t), want 1", n, res.Restarted)
	}
	if v, ok := h.label(); v != "true" || !ok {
		t.Errorf("label = %q, %t; want true", v, ok)
	}
	if len(res.Changed) != 7 {
		t.Errorf("changed %q, want 4 binaries, shim config, drop-in, containerd config", res.Changed)
	}
	if !strings.Contains(h.log.String(), "install complete: changed: binary /usr/local/bin/podsnapshot-shimd (installed), binary /usr/local/bin/containerd-shim-podsnapshot-v1 (installed)") {
		t.Errorf("no summary line in the log:\n%s", h.log)
	}

	before := listFiles(t, h.root)
	time.Sleep(10 * time.Millisecond) // a rewrite would show in the mtimes
	res, err = Install(context.Background(), h.opts)
	if err != nil {
		t.Fatal(err)
	}
	if after := listFiles(t, h.root); !reflect.DeepEqual(before, after) {
		t.Errorf("second run changed the host:\nbefore %v\nafter  %v", before, after)
	}
	if n := h.ctrd.restartCount(); n != 1 || res.Restarted || res.RestartAsked {
		t.Errorf("second run: %d restarts in all (Restarted %t), want still 1", n, res.Restarted)
	}
	if len(res.Changed) != 0 || h.labels.sets != 2 {
		t.Errorf("second run: changed %q, %d label patches; want nothing changed, the label set again", res.Changed, h.labels.sets)
	}
	for _, want := range []string{"binary /usr/local/bin/runsc: unchanged", "install complete: changed: nothing; containerd not restarted; node node-1 labelled podsnapshot.gke.io/ready=true"} {
		if !strings.Contains(h.log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, h.log)
		}
	}
}

// TestInstallBinaryUpdate: an updated binary is a new inode at the path; a file opened
// before the update (a running shim's executable) still reads the old content.
func TestInstallBinaryUpdate(t *testing.T) {
	h := newTestHost(t)
	if _, err := Install(context.Background(), h.opts); err != nil {
		t.Fatal(err)
	}
	target := h.path("/usr/local/bin/runsc")
	old, err := os.Open(target)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	oldInfo, _ := old.Stat()
	writeFile(t, filepath.Join(h.src, "runsc"), "#!binary runsc v2\n", 0o755)

	res, err := Install(context.Background(), h.opts)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"binary /usr/local/bin/runsc (updated)"}; !reflect.DeepEqual(res.Changed, want) {
		t.Errorf("changed %q, want %q", res.Changed, want)
	}
	if got := readFile(t, target); got != "#!binary runsc v2\n" {
		t.Errorf("%s = %q after the update", target, got)
	}
	newInfo, err := os.Stat(target)
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(oldInfo, newInfo) {
		t.Error("the update wrote into the old inode")
	}
	if newInfo.Sys().(*syscall.Stat_t).Ino == oldInfo.Sys().(*syscall.Stat_t).Ino {
		t.Error("same inode number after the update")
	}
	data, err := io.ReadAll(old)
	if err != nil || string(data) != "#!binary runsc v1\n" {
		t.Errorf("the old file read %q, %v; want its old content", data, err)
	}
	// A binary is exec'd per pod: no restart of containerd for it.
	if n := h.ctrd.restartCount(); n != 1 {
		t.Errorf("%d restarts, want only the first install's", n)
	}
}

// TestInstallExistingContainerdConfig: an existing containerd config is read, never
// written; an import that names the drop-in (glob, relative glob, exact path) is enough,
// and a config without one is an error saying what to add, with nothing restarted and
// no label.
func TestInstallExistingContainerdConfig(t *testing.T) {
	const tail = "\n[plugins.'io.containerd.grpc.v1.cri']\n  sandbox_image = 'pause:3.10' # a comment\n"
	for _, tc := range []struct {
		name, config string
		ok           bool
	}{
		{"glob", "version = 2\nimports = [\"/etc/containerd/conf.d/*.toml\"]" + tail, true},
		{"relative glob", "imports = [\"/opt/x.toml\", \"conf.d/*.toml\"]" + tail, true},
		{"exact path", "imports = ['/etc/containerd/conf.d/podsnapshot-cri.toml']" + tail, true},
		{"other directory", "imports = [\"/etc/containerd/other.d/*.toml\"]" + tail, false},
		{"no import", "version = 2" + tail, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestHost(t)
			cfgPath := h.path("/etc/containerd/config.toml")
			writeFile(t, cfgPath, tc.config, 0o600)
			res, err := Install(context.Background(), h.opts)
			if got := readFile(t, cfgPath); got != tc.config {
				t.Errorf("containerd config rewritten:\n%s", got)
			}
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				if h.ctrd.restartCount() != 1 || !res.Restarted {
					t.Errorf("%d restarts, want 1 (the drop-in is new)", h.ctrd.restartCount())
				}
				return
			}
			want := `containerd config /etc/containerd/config.toml does not import /etc/containerd/conf.d/podsnapshot-cri.toml: add the top-level line imports = ["/etc/containerd/conf.d/*.toml"]`
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("err = %v, want one containing %q", err, want)
			}
			if h.ctrd.restartCount() != 0 || h.labels.sets != 0 {
				t.Errorf("%d restarts, %d labels after the error, want none", h.ctrd.restartCount(), h.labels.sets)
			}
			// The drop-in is written before the import is checked (it is inert until
			// imported), so it is there now.
			if _, err := os.Stat(h.ctrd.dropin); err != nil {
				t.Errorf("drop-in: %v", err)
			}
			// The user adds the import: the next run finds the drop-in unchanged but the
			// running containerd without the handler, and restarts it.
			writeFile(t, cfgPath, "imports = [\"/etc/containerd/conf.d/*.toml\"]"+tail, 0o600)
			if _, err := Install(context.Background(), h.opts); err != nil {
				t.Fatal(err)
			}
			if _, ok := h.label(); h.ctrd.restartCount() != 1 || !ok {
				t.Errorf("after the fix: %d restarts, label %t; want 1 and set", h.ctrd.restartCount(), ok)
			}
		})
	}
}

// TestInstallConfigPath: a non-default --config is the drop-in's ConfigPath and where the
// shim config is written.
func TestInstallConfigPath(t *testing.T) {
	h := newTestHost(t)
	h.opts.ShimConfig = "/etc/podsnapshot/shim config.toml"
	if _, err := Install(context.Background(), h.opts); err != nil {
		t.Fatal(err)
	}
	cri, err := deploy.ParseCRI([]byte(readFile(t, h.ctrd.dropin)))
	if err != nil {
		t.Fatal(err)
	}
	if got := cri.Plugins.Runtime.Containerd.Runtimes["podsnapshot"].Options.ConfigPath; got != h.opts.ShimConfig {
		t.Errorf("drop-in ConfigPath = %q, want %q", got, h.opts.ShimConfig)
	}
	if got := readFile(t, h.path(h.opts.ShimConfig)); got != string(shimConfigText) {
		t.Errorf("shim config = %q", got)
	}
	if _, err := os.Stat(h.path(config.DefaultPath)); !os.IsNotExist(err) {
		t.Errorf("default shim config path: %v, want none written", err)
	}
}

// TestInstallKeepsShimConfig: an existing shim config, even one the shim would refuse,
// is the user's and stays as it is.
func TestInstallKeepsShimConfig(t *testing.T) {
	h := newTestHost(t)
	writeFile(t, h.path("/etc/containerd/podsnapshot.toml"), "work_dir = \"/data/ps\"\n", 0o600)
	res, err := Install(context.Background(), h.opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, h.path("/etc/containerd/podsnapshot.toml")); got != "work_dir = \"/data/ps\"\n" {
		t.Errorf("shim config = %q, want the user's", got)
	}
	for _, c := range res.Changed {
		if strings.HasPrefix(c, "shim config") {
			t.Errorf("changed %q", c)
		}
	}
}

// TestInstallRestartNone: with the restart left to the operator (ManualRestarter)
// nothing restarts containerd; Install logs the command and waits until the handler
// is served.
func TestInstallRestartNone(t *testing.T) {
	h := newTestHost(t)
	checker := &lateChecker{readyAt: 5}
	h.opts.Restarter = ManualRestarter{Unit: "containerd.service", Log: h.opts.Log}
	h.opts.Checker = checker
	res, err := Install(context.Background(), h.opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Restarted || !res.RestartAsked || h.ctrd.restartCount() != 0 {
		t.Errorf("Restarted %t, RestartAsked %t, %d restarts; want only asked", res.Restarted, res.RestartAsked, h.ctrd.restartCount())
	}
	if checker.calls != 5 {
		t.Errorf("%d Status calls, want 5 (served at the 5th)", checker.calls)
	}
	if _, ok := h.label(); !ok {
		t.Error("node not labelled")
	}
	for _, want := range []string{"run on the node: systemctl restart containerd.service", "containerd restarted by the operator"} {
		if !strings.Contains(h.log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, h.log)
		}
	}
}

// TestInstallWaitTimeout: a containerd that never serves the handler fails Install after
// WaitTimeout, naming the handler, and the node is not labelled.
func TestInstallWaitTimeout(t *testing.T) {
	h := newTestHost(t)
	h.opts.Restarter = ManualRestarter{Unit: "containerd.service", Log: h.opts.Log}
	h.opts.Checker = &lateChecker{readyAt: 1 << 30}
	h.opts.WaitTimeout = 50 * time.Millisecond
	_, err := Install(context.Background(), h.opts)
	if err == nil || !strings.Contains(err.Error(), `containerd did not serve runtime handler "podsnapshot" in time`) {
		t.Fatalf("err = %v", err)
	}
	if h.labels.sets != 0 {
		t.Error("node labelled although the handler is not served")
	}
}

// TestInstallValidate: relative paths and missing parts are refused before anything is
// written.
func TestInstallValidate(t *testing.T) {
	h := newTestHost(t)
	h.opts.BinDir = "usr/local/bin"
	h.opts.Labeler = nil
	_, err := Install(context.Background(), h.opts)
	if err == nil || !strings.Contains(err.Error(), `bin dir "usr/local/bin": want an absolute path`) || !strings.Contains(err.Error(), "labeler") {
		t.Fatalf("err = %v", err)
	}
	if files := listFiles(t, h.root); len(files) != 0 {
		t.Errorf("files written: %v", files)
	}
}
