package storage

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
	"golang.org/x/oauth2"
)

// Options tune a store. The zero value of a field means its default.
type Options struct {
	// PartSize is the size in bytes of one part of a parallel composite upload
	// (storage/gcs). Default DefaultPartSize. Upload memory is about
	// (Parallelism+1) * PartSize.
	PartSize int64
	// Parallelism is how many parts are uploaded, or ranges read, at once (storage/gcs).
	// Default DefaultParallelism.
	Parallelism int
	// ReadChunkSize is the size in bytes of one ranged read of a parallel download
	// (storage/gcs). Default DefaultReadChunkSize. Download memory is about
	// (Parallelism+1) * ReadChunkSize.
	ReadChunkSize int64
	// Log receives debug and warning messages. Default logrus.StandardLogger().
	Log logrus.FieldLogger
	// Endpoint is the object store's API endpoint (storage/gcs: the JSON API URL, e.g.
	// "https://storage.googleapis.com/storage/v1/"); "" means the client's default.
	Endpoint string
	// TokenSource, when set, authenticates every request (storage/gcs: an OAuth2 access
	// token) in place of the process's default credentials.
	TokenSource oauth2.TokenSource
}

// Defaults of Options.
const (
	DefaultPartSize      = 32 << 20
	DefaultReadChunkSize = 16 << 20
)

// DefaultParallelism is Options.Parallelism's default: enough requests in flight to fill a
// VM's link to Cloud Storage, few enough to keep upload memory near 160 MiB.
const DefaultParallelism = 4

// Option sets a field of Options.
type Option func(*Options)

// WithPartSize sets Options.PartSize (bytes).
func WithPartSize(n int64) Option { return func(o *Options) { o.PartSize = n } }

// WithParallelism sets Options.Parallelism.
func WithParallelism(n int) Option { return func(o *Options) { o.Parallelism = n } }

// WithReadChunkSize sets Options.ReadChunkSize (bytes).
func WithReadChunkSize(n int64) Option { return func(o *Options) { o.ReadChunkSize = n } }

// WithEndpoint sets Options.Endpoint.
func WithEndpoint(u string) Option { return func(o *Options) { o.Endpoint = u } }

// WithTokenSource sets Options.TokenSource.
func WithTokenSource(ts oauth2.TokenSource) Option { return func(o *Options) { o.TokenSource = ts } }

// WithLogger sets Options.Log.
func WithLogger(l logrus.FieldLogger) Option { return func(o *Options) { o.Log = l } }

// NewOptions applies opts over the defaults.
func NewOptions(opts ...Option) Options {
	var o Options
	for _, f := range opts {
		f(&o)
	}
	if o.PartSize <= 0 {
		o.PartSize = DefaultPartSize
	}
	if o.Parallelism <= 0 {
		o.Parallelism = DefaultParallelism
	}
	if o.ReadChunkSize <= 0 {
		o.ReadChunkSize = DefaultReadChunkSize
	}
	if o.Log == nil {
		o.Log = logrus.StandardLogger()
	}
	return o
}

// OpenFunc opens the store a URL names; u is already parsed, o has its defaults applied.
type OpenFunc func(ctx context.Context, u *url.URL, o Options) (Store, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]OpenFunc{}
)

// Register makes Open handle URLs of scheme (e.g. "gs", "file"). Backends call it from
// init, so a program links a backend by importing it: storage/gcs registers "gs" and
// storage/local registers "file". This keeps storage free of imports of its backends.
func Register(scheme string, open OpenFunc) {
	registryMu.Lock()
	defer registryMu.Unlock()
	registry[scheme] = open
}

// Open opens the store at rawURL: "gs://bucket/prefix" (storage/gcs) or "file:///path"
// or a bare absolute path (storage/local). The backend's package must be imported
// (blank import is enough); otherwise Open says which one.
func Open(ctx context.Context, rawURL string, opts ...Option) (Store, error) {
	u, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	registryMu.RLock()
	open := registry[u.Scheme]
	registryMu.RUnlock()
	if open == nil {
		hint := ""
		switch u.Scheme {
		case "gs":
			hint = " (import github.com/podsnapshot/podsnapshot/storage/gcs)"
		case "file":
			hint = " (import github.com/podsnapshot/podsnapshot/storage/local)"
		}
		return nil, fmt.Errorf("open store %s: no backend for scheme %q%s", rawURL, u.Scheme, hint)
	}
	return open(ctx, u, NewOptions(opts...))
}

func parseURL(raw string) (*url.URL, error) {
	if strings.HasPrefix(raw, "/") {
		return &url.URL{Scheme: "file", Path: raw}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", raw, err)
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("open store %s: want gs://bucket/prefix, file:///path or an absolute path", raw)
	}
	return u, nil
}
