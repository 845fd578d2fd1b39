package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseValid(t *testing.T) {
	cfg, err := Parse([]byte(`
log_level = "debug"
work_dir = "/tmp/w"
restore_wait_seconds = 2.5
kubelet_pods_dir = "/tmp/pods"
save_direct = true
[runsc]
path = "/usr/local/bin/runsc"
root = "/run/r"
[runsc.flags]
platform = "systrap"
network = "none"
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.LogLevel != "debug" || cfg.WorkDir != "/tmp/w" || cfg.Runsc.Path != "/usr/local/bin/runsc" ||
		cfg.Runsc.Root != "/run/r" || cfg.Runsc.Flags["platform"] != "systrap" || cfg.Runsc.Flags["network"] != "none" {
		t.Fatalf("unexpected config: %+v", cfg)
	}
	if cfg.RestoreWait() != 2500*time.Millisecond || cfg.KubeletPodsDir != "/tmp/pods" || !cfg.SaveDirect {
		t.Fatalf("restore_wait_seconds/kubelet_pods_dir/save_direct: %+v", cfg)
	}
	if Default().SaveDirect {
		t.Fatal("save_direct is on by default")
	}
	if cfg.PolicyDir != "/etc/podsnapshot" {
		t.Fatalf("default policy_dir lost: %q", cfg.PolicyDir)
	}
}

// TestExcludeZeroPages: the key is off by default, parses as a bool and names itself when
// its value is not one.
func TestExcludeZeroPages(t *testing.T) {
	if Default().ExcludeZeroPages {
		t.Fatal("exclude_zero_pages is on by default")
	}
	cfg, err := Parse([]byte("exclude_zero_pages = true\n"))
	if err != nil || !cfg.ExcludeZeroPages {
		t.Fatalf("exclude_zero_pages = true: %v, %+v", err, cfg)
	}
	if cfg, err = Parse([]byte("exclude_zero_pages = false\n")); err != nil || cfg.ExcludeZeroPages {
		t.Fatalf("exclude_zero_pages = false: %v, %+v", err, cfg)
	}
	if _, err := Parse([]byte(`exclude_zero_pages = "yes"`)); err == nil || !strings.Contains(err.Error(), "exclude_zero_pages") {
		t.Fatalf("a string for exclude_zero_pages: %v", err)
	}
	if _, err := Parse([]byte("exclude_zero_page = true\n")); err == nil || !strings.Contains(err.Error(), "exclude_zero_pages,") {
		t.Fatalf("a typo of the key should list exclude_zero_pages among the known keys: %v", err)
	}
}

// TestRestoreDirect: on by default; false turns it off.
func TestRestoreDirect(t *testing.T) {
	if !Default().RestoreDirect {
		t.Fatal("restore_direct is off by default")
	}
	cfg, err := Parse([]byte("restore_direct = false\n"))
	if err != nil || cfg.RestoreDirect {
		t.Fatalf("restore_direct = false: %v, %+v", err, cfg)
	}
}

// TestStreamRestore: on by default; false turns it off.
func TestStreamRestore(t *testing.T) {
	if !Default().StreamRestore {
		t.Fatal("stream_restore is off by default")
	}
	cfg, err := Parse([]byte("stream_restore = false\n"))
	if err != nil || cfg.StreamRestore {
		t.Fatalf("stream_restore = false: %v, %+v", err, cfg)
	}
}

// TestHotFrames: on by default; false turns it off; a typo lists it among the known keys.
func TestHotFrames(t *testing.T) {
	if !Default().HotFrames {
		t.Fatal("hot_frames is off by default")
	}
	cfg, err := Parse([]byte("hot_frames = false\n"))
	if err != nil || cfg.HotFrames {
		t.Fatalf("hot_frames = false: %v, %+v", err, cfg)
	}
	if _, err := Parse([]byte("hot_frame = true\n")); err == nil || !strings.Contains(err.Error(), "hot_frames,") {
		t.Fatalf("a typo of the key should list hot_frames among the known keys: %v", err)
	}
}

func TestParseErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct{ name, toml, want string }{
		{"unknown top-level key", `log_levl = "info"`, `unknown key "log_levl"`},
		{"unknown nested key", "[runsc]\nbinary = \"x\"", `unknown key "runsc.binary"`},
		{"wrong type", "[runsc]\npath = 3", `runsc.path`},
		{"bad level", `log_level = "loud"`, `key "log_level": "loud" is not a log level`},
		{"relative root", "[runsc]\nroot = \"rel\"", `key "runsc.root"`},
		{"reserved flag", "[runsc.flags]\nroot = \"/x\"", `key "runsc.flags.root"`},
		{"dashed flag", "[runsc.flags]\n\"--debug\" = \"true\"", `without dashes`},
		{"syntax", "log_level = ", `line 1`},
		{"zero restore wait", "restore_wait_seconds = 0", `key "restore_wait_seconds"`},
		{"relative pods dir", `kubelet_pods_dir = "pods"`, `key "kubelet_pods_dir"`},
		// Issue 14 item 5: these were accepted; a non-finite or huge wait timed every
		// deferred restore out at once.
		{"nan restore wait", "restore_wait_seconds = nan", `key "restore_wait_seconds": NaN must be a number of seconds`},
		{"inf restore wait", "restore_wait_seconds = inf", `key "restore_wait_seconds": +Inf`},
		{"-inf restore wait", "restore_wait_seconds = -inf", `key "restore_wait_seconds"`},
		{"huge restore wait", "restore_wait_seconds = 1e300", `key "restore_wait_seconds": 1e+300`},
		{"restore wait over an hour", "restore_wait_seconds = 3600.5", `at most 3600`},
		{"empty policy dir", `policy_dir = ""`, `key "policy_dir": "" must be an absolute path`},
		{"relative policy dir", `policy_dir = "etc/ps"`, `key "policy_dir": "etc/ps" must be an absolute path`},
		{"empty work dir", `work_dir = ""`, `key "work_dir"`},
		{"relative work dir", `work_dir = "./w"`, `key "work_dir"`},
		{"relative cache dir", `cache_dir = "c"`, `key "cache_dir"`},
		{"empty pods dir", `kubelet_pods_dir = ""`, `key "kubelet_pods_dir"`},
		{"relative report dir", `report_dir = "r"`, `key "report_dir": "r" must be an absolute path`},
		{"root report dir", `report_dir = "/"`, `key "report_dir"`},
		{"no reports kept", `report_max_files = 0`, `key "report_max_files": 0 must be at least 1`},
		{"empty runsc root", "[runsc]\nroot = \"\"", `key "runsc.root"`},
		// Issue 14 item 3: eviction from a cache dir that was the work dir deleted a
		// live sandbox's image.
		{"root work dir", `work_dir = "/"`, `key "work_dir": "/" is the root directory`},
		{"root cache dir", `cache_dir = "/"`, `key "cache_dir": "/" is the root directory`},
		{"cache dir is work dir", "work_dir = \"/w\"\ncache_dir = \"/w\"", `key "cache_dir": "/w" is work_dir`},
		{"cache dir is work dir, unclean", "work_dir = \"/w\"\ncache_dir = \"/w/\"", `key "cache_dir": "/w/" is work_dir`},
		{"cache dir contains work dir", "work_dir = \"/var/lib/ps\"\ncache_dir = \"/var\"", `key "cache_dir": "/var" contains work_dir "/var/lib/ps"`},
		{"cache dir in a namespace's dir", "work_dir = \"/w\"\ncache_dir = \"/w/k8s.io\"", `key "cache_dir": "/w/k8s.io" lies inside work_dir "/w"`},
		{"cache dir below the default", "work_dir = \"/w\"\ncache_dir = \"/w/cache/x\"", `lies inside work_dir`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse(%q) = %v, want error containing %q", tc.toml, err, tc.want)
			}
		})
	}
}

func TestCacheDirAccepted(t *testing.T) {
	for _, tc := range []struct{ toml, want string }{
		{``, "/var/lib/podsnapshot/cache"},
		{`work_dir = "/w"`, "/w/cache"},
		{"work_dir = \"/w\"\ncache_dir = \"/w/cache\"", "/w/cache"},
		{"work_dir = \"/w\"\ncache_dir = \"/var/cache/ps\"", "/var/cache/ps"},
		{"work_dir = \"/w\"\ncache_dir = \"/w2\"", "/w2"},
		{"restore_wait_seconds = 3600", "/var/lib/podsnapshot/cache"},
	} {
		cfg, err := Parse([]byte(tc.toml))
		if err != nil || cfg.Cache() != tc.want {
			t.Errorf("Parse(%q) = cache %q, %v; want %q", tc.toml, cfg.Cache(), err, tc.want)
		}
	}
}

func TestReportDir(t *testing.T) {
	for _, tc := range []struct {
		toml, want string
		max        int
	}{
		{``, "/var/lib/podsnapshot/.reports", 10000},
		{`work_dir = "/w"`, "/w/.reports", 10000},
		{"report_dir = \"/var/spool/ps\"\nreport_max_files = 5", "/var/spool/ps", 5},
	} {
		cfg, err := Parse([]byte(tc.toml))
		if err != nil || cfg.Reports() != tc.want || cfg.ReportMaxFiles != tc.max {
			t.Errorf("Parse(%q) = report dir %q, max %d, %v; want %q, %d", tc.toml, cfg.Reports(), cfg.ReportMaxFiles, err, tc.want, tc.max)
		}
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shim.toml")
	if err := os.WriteFile(path, []byte("[runsc]\nflagz = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "runsc.flagz") {
		t.Fatalf("Load = %v, want error naming %s and runsc.flagz", err, path)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.toml")); err == nil {
		t.Fatal("a named config file that is missing must be an error")
	}
}
