// Package config reads the node configuration (TOML) that the shim, the CLI and the node
// agent share: the file named by the shim's ConfigPath runtime option, else
// /etc/containerd/podsnapshot.toml.
//
// Example (every key optional):
//
//	log_level = "info"                    # panic|fatal|error|warn|info|debug|trace
//	work_dir = "/var/lib/podsnapshot"     # checkpoint images and downloads
//	policy_dir = "/etc/podsnapshot"       # PodSnapshotPolicy manifests
//	cache_dir = ""                        # node cache of restored snapshots; "": <work_dir>/cache
//	cache_max_bytes = 10737418240         # its size limit in bytes; 0 disables it
//	restore_wait_seconds = 30             # how long a pod's deferred restore waits for a container
//	kubelet_pods_dir = "/var/lib/kubelet/pods"  # where emptyDir volumes live (mount hints)
//
//	[runsc]
//	path = "runsc"                        # binary, a path or a name in $PATH
//	root = "/run/containerd/runsc"        # state root; the namespace is appended
//
//	[runsc.flags]                         # extra global runsc flags, without dashes
//	platform = "systrap"
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/sirupsen/logrus"
)

// DefaultPath is where the config is read from when no ConfigPath option is given.
const DefaultPath = "/etc/containerd/podsnapshot.toml"

// Config is the shim configuration.
type Config struct {
	// LogLevel is a logrus level name.
	LogLevel string `toml:"log_level"`
	// WorkDir holds per-sandbox checkpoint images and downloaded snapshots.
	WorkDir string `toml:"work_dir"`
	// PolicyDir holds PodSnapshotPolicy and PodSnapshotStorageConfig manifests.
	PolicyDir string `toml:"policy_dir"`
	// CacheDir keeps decompressed snapshots for later restores; "" means <WorkDir>/cache.
	CacheDir string `toml:"cache_dir"`
	// CacheMaxBytes bounds CacheDir, in bytes; 0 disables the cache.
	CacheMaxBytes int64 `toml:"cache_max_bytes"`
	// RestoreWaitSeconds bounds, in seconds, how long the deferred restore of a
	// multi-container pod waits for the next container recorded in its snapshot (counted
	// from the sandbox's start and from each arrival) before the pod starts cold.
	RestoreWaitSeconds float64 `toml:"restore_wait_seconds"`
	// KubeletPodsDir is the kubelet's pods directory (<dir>/<pod uid>/volumes/<plugin>/<name>):
	// where the shim finds a pod volume named by a gVisor mount hint
	// (dev.gvisor.spec.mount.<name>.type) that has no .source.
	KubeletPodsDir string `toml:"kubelet_pods_dir"`
	// SaveDirect makes gVisor write a workload-triggered checkpoint's pages file with
	// O_DIRECT (annotation dev.gvisor.internal.checkpoint.direct) where WorkDir takes it:
	// around the page cache, at the disk's speed. It shortens the workload's pause for
	// images larger than the node's page cache absorbs quickly and leaves no gigabytes of
	// dirty pages behind, at the cost of the upload reading the image from disk.
	SaveDirect bool  `toml:"save_direct"`
	Runsc      Runsc `toml:"runsc"`

	// Path is the file this config was read from; empty for built-in defaults.
	Path string `toml:"-"`
}

// Runsc configures how runsc is run.
type Runsc struct {
	Path  string            `toml:"path"`
	Root  string            `toml:"root"`
	Flags map[string]string `toml:"flags"`
}

// Default returns the built-in configuration.
func Default() Config {
	return Config{
		LogLevel:      "info",
		WorkDir:       "/var/lib/podsnapshot",
		PolicyDir:     "/etc/podsnapshot",
		CacheMaxBytes: 10 << 30,
		// Kubelet creates a pod's containers one after another, pulling each image first;
		// 30 s covers a pull of a cached image many times over.
		RestoreWaitSeconds: 30,
		KubeletPodsDir:     "/var/lib/kubelet/pods",
		Runsc: Runsc{
			Path: "runsc",
			Root: "/run/containerd/runsc",
		},
	}
}

// Load reads path over the defaults. An empty path means DefaultPath, which may be
// absent (defaults apply); a named path must exist. Errors name the file and, for a bad
// key or value, the key.
func Load(path string) (Config, error) {
	cfg := Default()
	explicit := path != ""
	if !explicit {
		path = DefaultPath
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if !explicit && errors.Is(err, os.ErrNotExist) {
			return cfg, nil
		}
		return cfg, fmt.Errorf("shim config %s: %w", path, err)
	}
	cfg, err = Parse(data)
	if err != nil {
		return cfg, fmt.Errorf("shim config %s: %w", path, err)
	}
	cfg.Path = path
	return cfg, nil
}

// Parse decodes TOML over the defaults and validates the result. Unknown keys are
// errors, so a typo never silently falls back to a default.
func Parse(data []byte) (Config, error) {
	cfg := Default()
	md, err := toml.Decode(string(data), &cfg)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			if perr.LastKey != "" {
				return cfg, fmt.Errorf("key %q: line %d: %s", perr.LastKey, perr.Position.Line, perr.Message)
			}
			return cfg, fmt.Errorf("line %d: %s", perr.Position.Line, perr.Message)
		}
		return cfg, err
	}
	if undec := md.Undecoded(); len(undec) > 0 {
		keys := make([]string, len(undec))
		for i, k := range undec {
			keys[i] = k.String()
		}
		return cfg, fmt.Errorf("unknown key %q (known: log_level, work_dir, policy_dir, cache_dir, cache_max_bytes, restore_wait_seconds, kubelet_pods_dir, save_direct, runsc.path, runsc.root, runsc.flags.*)", strings.Join(keys, `", "`))
	}
	return cfg, cfg.Validate()
}

// Cache returns the snapshot cache directory: CacheDir, or <WorkDir>/cache.
func (c Config) Cache() string {
	if c.CacheDir != "" {
		return c.CacheDir
	}
	return filepath.Join(c.WorkDir, "cache")
}

// RestoreWait is RestoreWaitSeconds as a duration.
func (c Config) RestoreWait() time.Duration {
	return time.Duration(c.RestoreWaitSeconds * float64(time.Second))
}

// Validate checks values that TOML types cannot.
func (c Config) Validate() error {
	if _, err := logrus.ParseLevel(c.LogLevel); err != nil {
		return fmt.Errorf("key \"log_level\": %q is not a log level (panic, fatal, error, warn, info, debug, trace)", c.LogLevel)
	}
	if c.Runsc.Path == "" {
		return errors.New(`key "runsc.path": must not be empty`)
	}
	if c.Runsc.Root == "" || !strings.HasPrefix(c.Runsc.Root, "/") {
		return fmt.Errorf("key \"runsc.root\": %q must be an absolute path", c.Runsc.Root)
	}
	if c.WorkDir == "" || !strings.HasPrefix(c.WorkDir, "/") {
		return fmt.Errorf("key \"work_dir\": %q must be an absolute path", c.WorkDir)
	}
	if c.CacheDir != "" && !strings.HasPrefix(c.CacheDir, "/") {
		return fmt.Errorf("key \"cache_dir\": %q must be an absolute path", c.CacheDir)
	}
	if c.CacheMaxBytes < 0 {
		return fmt.Errorf("key \"cache_max_bytes\": %d must not be negative", c.CacheMaxBytes)
	}
	if c.RestoreWaitSeconds <= 0 {
		return fmt.Errorf("key \"restore_wait_seconds\": %v must be positive", c.RestoreWaitSeconds)
	}
	if c.KubeletPodsDir == "" || !strings.HasPrefix(c.KubeletPodsDir, "/") {
		return fmt.Errorf("key \"kubelet_pods_dir\": %q must be an absolute path", c.KubeletPodsDir)
	}
	for k := range c.Runsc.Flags {
		switch k {
		case "root", "log", "log-format":
			return fmt.Errorf("key \"runsc.flags.%s\": set by the shim; use runsc.root or remove it", k)
		}
		if strings.HasPrefix(k, "-") {
			return fmt.Errorf("key \"runsc.flags.%s\": write flag names without dashes", k)
		}
	}
	return nil
}
