// Package config reads the node configuration (TOML) that the shim, the CLI and the node
// agent share: the file named by the shim's ConfigPath runtime option, else
// /etc/containerd/podsnapshot.toml.
//
// Example (every key optional):
//
//	log_level = "info"                    # panic|fatal|error|warn|info|debug|trace
//	work_dir = "/var/lib/podsnapshot"     # checkpoint images and downloads; absolute, not "/"
//	policy_dir = "/etc/podsnapshot"       # PodSnapshotPolicy manifests; absolute
//	cache_dir = ""                        # node cache of restored snapshots; "": <work_dir>/cache;
//	                                      # absolute, not "/", not work_dir, not above it, and
//	                                      # inside it only <work_dir>/cache
//	cache_max_bytes = 10737418240         # its size limit in bytes; 0 disables it
//	restore_wait_seconds = 30             # how long a pod's deferred restore waits for a
//	                                      # container; above 0, at most 3600
//	kubelet_pods_dir = "/var/lib/kubelet/pods"  # where emptyDir volumes live (mount hints)
//	report_dir = ""                       # spool of reports for podsnapshot-agent; "": <work_dir>/.reports
//	report_max_files = 10000              # at most this many reports wait; the oldest go first
//	save_direct = false                   # O_DIRECT pages file for workload-triggered checkpoints
//	exclude_zero_pages = false            # checkpoints leave out zero-filled pages (smaller
//	                                      # images, a longer save)
//	stream_restore = true                 # restore while the pages arrive (FUSE); false:
//	                                      # download the whole snapshot first
//	hot_frames = true                     # a streaming restore fetches first the frames
//	                                      # an earlier one read first (and records them)
//	restore_direct = true                 # restores from the node cache read pages.img
//	                                      # with O_DIRECT (runsc restore --direct)
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
	"net/url"
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
	SaveDirect bool `toml:"save_direct"`
	// ExcludeZeroPages makes gVisor leave zero-filled pages of the application's memory
	// out of every checkpoint, including pages the workload touched (committed) that
	// hold only zeros; without it gVisor skips only pages it cannot tell were ever
	// committed. The image and its upload shrink by the workload's zeroed memory, and a
	// restore maps those pages as zero again; the save, with the workload paused, takes
	// longer because gVisor reads every committed page. Workload trigger: annotation
	// dev.gvisor.internal.checkpoint.exclude-committed-zero-pages on the sandbox; manual
	// trigger: `runsc checkpoint --exclude-committed-zero-pages`.
	ExcludeZeroPages bool `toml:"exclude_zero_pages"`
	// StreamRestore restores a snapshot stored in frames while its pages arrive: runsc
	// restores from a FUSE mount the shim serves, whose pages file waits for, and fetches
	// first, the frames the sandbox reads (package checkpoint/stream). False, or where
	// FUSE cannot be mounted (logged once), the whole snapshot is downloaded and
	// verified into the node cache before runsc restores.
	StreamRestore bool `toml:"stream_restore"`
	// HotFrames makes a streaming restore fetch first the frames of pages.img that an
	// earlier restore of the snapshot read out of its loader's order while it started
	// (the snapshot's hot-frame list), and, finding no list, record those frames and
	// store the list next to the snapshot (package checkpoint/stream, hot.go). False:
	// frames arrive in order, and none is recorded.
	HotFrames bool `toml:"hot_frames"`
	// RestoreDirect passes `runsc restore --direct` (gVisor opens pages.img O_DIRECT) to
	// a restore that reads plain files: a node cache entry (every restore after a node's
	// first of a snapshot) or a whole download (stream_restore false, or no FUSE). A
	// streamed restore reads the FUSE mount, whose pages file is FOPEN_DIRECT_IO already,
	// and never gets it. gVisor's page loader read a page-cached pages.img 3x (512 MiB)
	// to 7x (2 GiB) slower than with O_DIRECT or through the mount on the 2-core VM
	// (docs/architecture.md, "Cached restores"). False reads the files through the page
	// cache, as before: for a node whose disk reads are much slower than its memory
	// copies and that restores many pods from one entry at once (O_DIRECT reads the
	// disk each time, never the cache).
	RestoreDirect bool `toml:"restore_direct"`
	// ReportDir is the spool where the shim reports what happened to Kubernetes pods
	// (package report) for the node agent; "" means <WorkDir>/.reports (a name no
	// containerd namespace can have).
	ReportDir string `toml:"report_dir"`
	// ReportMaxFiles bounds the spool: at that many reports the oldest is dropped before
	// a new one is written, so a node without an agent does not fill its disk.
	ReportMaxFiles int `toml:"report_max_files"`
	// GCSEndpoint is the Cloud Storage JSON API endpoint the shim's stores use, e.g.
	// "https://storage.googleapis.com/storage/v1/" (the client's default when empty) or a
	// private or test endpoint; with it the client authenticates as it would against
	// Google (STORAGE_EMULATOR_HOST, by contrast, sends no credentials at all).
	GCSEndpoint string      `toml:"gcs_endpoint"`
	PodIdentity PodIdentity `toml:"pod_identity"`
	Runsc       Runsc       `toml:"runsc"`

	// Path is the file this config was read from; empty for built-in defaults.
	Path string `toml:"-"`
}

// PodIdentity configures storage access with the pod's own Kubernetes service account
// (PodSnapshotStorageConfig gcs.tokenSource: podKSA): the node agent writes a token for the
// pod's service account, bound to the pod and with audience TokenAudience, to
// <TokenDir>/<pod uid>; the shim exchanges it at STSURL for a Google access token of the
// workload identity pool's principal (Workload Identity Federation), the way
// golang.org/x/oauth2/google/externalaccount does.
type PodIdentity struct {
	// WorkloadIdentityProvider is the STS audience: the workload identity pool provider
	// that trusts the cluster's service account issuer,
	// "//iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>".
	// podKSA needs it; a pod of a podKSA storage config on a node without it starts cold.
	WorkloadIdentityProvider string `toml:"workload_identity_provider"`
	// TokenAudience is the audience of the pod's Kubernetes token; "" means
	// "https:" + WorkloadIdentityProvider, the provider's default allowed audience.
	TokenAudience string `toml:"token_audience"`
	// STSURL is the Security Token Service's token exchange endpoint.
	STSURL string `toml:"sts_url"`
	// TokenDir is where the agent writes pod tokens (0600, one file per pod UID) and the
	// shim reads them; "" means <WorkDir>/.tokens.
	TokenDir string `toml:"token_dir"`
}

// Audience returns the audience of pod tokens: TokenAudience or its default; "" when
// neither it nor the provider is set (no pod tokens on this node).
func (p PodIdentity) Audience() string {
	switch {
	case p.TokenAudience != "":
		return p.TokenAudience
	case p.WorkloadIdentityProvider != "":
		return "https:" + p.WorkloadIdentityProvider
	}
	return ""
}

// Tokens returns the pod token directory: PodIdentity.TokenDir, or <WorkDir>/.tokens.
func (c Config) Tokens() string {
	if c.PodIdentity.TokenDir != "" {
		return c.PodIdentity.TokenDir
	}
	return filepath.Join(c.WorkDir, ".tokens")
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
		ReportMaxFiles:     10000,
		StreamRestore:      true,
		HotFrames:          true,
		RestoreDirect:      true,
		PodIdentity:        PodIdentity{STSURL: "https://sts.googleapis.com/v1/token"},
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
		return cfg, fmt.Errorf("unknown key %q (known: log_level, work_dir, policy_dir, cache_dir, cache_max_bytes, restore_wait_seconds, kubelet_pods_dir, save_direct, exclude_zero_pages, stream_restore, hot_frames, restore_direct, report_dir, report_max_files, gcs_endpoint, pod_identity.workload_identity_provider, pod_identity.token_audience, pod_identity.sts_url, pod_identity.token_dir, runsc.path, runsc.root, runsc.flags.*)", strings.Join(keys, `", "`))
	}
	return cfg, cfg.Validate()
}

// Reports returns the report spool directory: ReportDir, or <WorkDir>/.reports.
func (c Config) Reports() string {
	if c.ReportDir != "" {
		return c.ReportDir
	}
	return filepath.Join(c.WorkDir, ".reports")
}

// Cache returns the snapshot cache directory: CacheDir, or <WorkDir>/cache.
func (c Config) Cache() string {
	if c.CacheDir != "" {
		return c.CacheDir
	}
	return filepath.Join(c.WorkDir, cacheName)
}

// validateCacheDir keeps the work dir and the cache dir apart (see Validate); both are
// absolute.
func (c Config) validateCacheDir() error {
	work := filepath.Clean(c.WorkDir)
	if work == "/" {
		return errors.New(`key "work_dir": "/" is the root directory; use a directory of the shim's own`)
	}
	if c.CacheDir == "" {
		return nil // <work_dir>/cache
	}
	cache := filepath.Clean(c.CacheDir)
	switch {
	case cache == "/":
		return errors.New(`key "cache_dir": "/" is the root directory; use a directory of the cache's own`)
	case cache == work:
		return fmt.Errorf("key \"cache_dir\": %q is work_dir; the cache evicts from its directory: use a directory of its own, or leave it unset for <work_dir>/cache", c.CacheDir)
	case within(work, cache):
		return fmt.Errorf("key \"cache_dir\": %q contains work_dir %q; use a directory of its own, or leave it unset for <work_dir>/cache", c.CacheDir, c.WorkDir)
	case within(cache, work) && cache != filepath.Join(work, cacheName):
		return fmt.Errorf("key \"cache_dir\": %q lies inside work_dir %q, where pods' checkpoint images live; use a directory outside it, or leave it unset for <work_dir>/cache", c.CacheDir, c.WorkDir)
	}
	return nil
}

// within reports whether the clean absolute path p lies strictly inside dir.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}

// RestoreWait is RestoreWaitSeconds as a duration.
func (c Config) RestoreWait() time.Duration {
	return time.Duration(c.RestoreWaitSeconds * float64(time.Second))
}

// MaxRestoreWaitSeconds bounds restore_wait_seconds: a deferred restore that waits longer
// for a container is a pod that is not coming.
const MaxRestoreWaitSeconds = 3600

// cacheName is the cache's directory in the work dir by default: <work_dir>/cache.
const cacheName = "cache"

// validateIdentity checks gcs_endpoint and the pod_identity table: URLs are absolute
// http(s) URLs, the provider has the form STS takes, the token dir is absolute.
func (c Config) validateIdentity() error {
	for _, u := range []struct{ key, v string }{{"gcs_endpoint", c.GCSEndpoint}, {"pod_identity.sts_url", c.PodIdentity.STSURL}} {
		if u.v == "" {
			continue
		}
		p, err := url.Parse(u.v)
		if err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
			return fmt.Errorf("key %q: %q is not an http(s) URL", u.key, u.v)
		}
	}
	if c.PodIdentity.STSURL == "" {
		return errors.New(`key "pod_identity.sts_url": must not be empty (default https://sts.googleapis.com/v1/token)`)
	}
	if w := c.PodIdentity.WorkloadIdentityProvider; w != "" && !strings.HasPrefix(w, "//") {
		return fmt.Errorf("key \"pod_identity.workload_identity_provider\": %q: want //iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>", w)
	}
	if d := c.PodIdentity.TokenDir; d != "" && (!filepath.IsAbs(d) || filepath.Clean(d) == "/") {
		return fmt.Errorf("key \"pod_identity.token_dir\": %q must be an absolute path other than /", d)
	}
	return nil
}

// Validate checks values that TOML types cannot. Errors are one line naming the key.
//
// Directories (work_dir, policy_dir, cache_dir when set, kubelet_pods_dir, runsc.root)
// must be absolute paths. The node cache evicts from its directory, so the work dir and
// the cache dir are kept apart: neither may be "/", the cache dir may not be the work dir
// nor contain it, and inside the work dir only <work_dir>/cache (the default) may be the
// cache dir; any other subdirectory of the work dir may be a pod's (<work_dir>/<containerd
// namespace>/<sandbox id>). The cache itself also evicts only entries it made.
func (c Config) Validate() error {
	if _, err := logrus.ParseLevel(c.LogLevel); err != nil {
		return fmt.Errorf("key \"log_level\": %q is not a log level (panic, fatal, error, warn, info, debug, trace)", c.LogLevel)
	}
	if c.Runsc.Path == "" {
		return errors.New(`key "runsc.path": must not be empty`)
	}
	for _, d := range []struct{ key, path string }{
		{"runsc.root", c.Runsc.Root},
		{"work_dir", c.WorkDir},
		{"policy_dir", c.PolicyDir},
		{"kubelet_pods_dir", c.KubeletPodsDir},
	} {
		if !filepath.IsAbs(d.path) {
			return fmt.Errorf("key %q: %q must be an absolute path", d.key, d.path)
		}
	}
	if c.ReportDir != "" && (!filepath.IsAbs(c.ReportDir) || filepath.Clean(c.ReportDir) == "/") {
		return fmt.Errorf("key \"report_dir\": %q must be an absolute path other than /", c.ReportDir)
	}
	if c.ReportMaxFiles < 1 {
		return fmt.Errorf("key \"report_max_files\": %d must be at least 1", c.ReportMaxFiles)
	}
	if c.CacheDir != "" && !filepath.IsAbs(c.CacheDir) {
		return fmt.Errorf("key \"cache_dir\": %q must be an absolute path", c.CacheDir)
	}
	if err := c.validateCacheDir(); err != nil {
		return err
	}
	if c.CacheMaxBytes < 0 {
		return fmt.Errorf("key \"cache_max_bytes\": %d must not be negative", c.CacheMaxBytes)
	}
	// Written so that NaN fails too.
	if !(c.RestoreWaitSeconds > 0 && c.RestoreWaitSeconds <= MaxRestoreWaitSeconds) {
		return fmt.Errorf("key \"restore_wait_seconds\": %v must be a number of seconds above 0 and at most %d", c.RestoreWaitSeconds, MaxRestoreWaitSeconds)
	}
	if err := c.validateIdentity(); err != nil {
		return err
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
