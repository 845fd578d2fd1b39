package policy

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// DefaultCheckInterval is how often, at most, a Loader looks for changed files.
const DefaultCheckInterval = time.Second

// Options configure a Loader. The zero value reads DefaultDir.
type Options struct {
	// Dir is the policy directory; "" means DefaultDir.
	Dir string
	// CheckInterval is the least time between two looks for changes; 0 means
	// DefaultCheckInterval, negative means on every lookup.
	CheckInterval time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives one warning per bad document at each (re)load and one per ambiguous
	// match; nil means logrus.StandardLogger().
	Logger logrus.FieldLogger
}

// Loader keeps the policy directory's Set current. At each lookup, and at most once per
// CheckInterval, it compares every policy file's name, size and modification time with the
// last load, and reloads the whole directory when any differs (a file added, removed or
// rewritten, also through a ConfigMap's symlink swap). It is safe for concurrent use.
type Loader struct {
	opts Options

	mu      sync.Mutex
	set     *Set
	stamp   string
	checked time.Time
}

// NewLoader returns a Loader; nothing is read before the first lookup.
func NewLoader(opts Options) *Loader {
	if opts.Dir == "" {
		opts.Dir = DefaultDir
	}
	if opts.CheckInterval == 0 {
		opts.CheckInterval = DefaultCheckInterval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = logrus.StandardLogger()
	}
	return &Loader{opts: opts}
}

// Dir is the directory the Loader reads.
func (l *Loader) Dir() string { return l.opts.Dir }

// Current returns the current Set, reloading first when files changed (see Loader).
func (l *Loader) Current() *Set {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.opts.Now()
	if l.set != nil && now.Sub(l.checked) < l.opts.CheckInterval {
		return l.set
	}
	l.checked = now
	if stamp := dirStamp(l.opts.Dir); l.set == nil || stamp != l.stamp {
		l.load(stamp)
	}
	return l.set
}

// Reload reads the directory now, whatever changed, and returns the new Set.
func (l *Loader) Reload() *Set {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.checked = l.opts.Now()
	l.load(dirStamp(l.opts.Dir))
	return l.set
}

func (l *Loader) load(stamp string) {
	l.set = Load(l.opts.Dir)
	l.stamp = stamp
	l.opts.Logger.WithField("dir", l.opts.Dir).Debugf("loaded %d policies, %d storage configs, %d errors",
		len(l.set.Policies), len(l.set.StorageConfigs), len(l.set.Errors))
	for _, err := range l.set.Errors {
		l.opts.Logger.WithError(err).Warn("policy skipped")
	}
}

// Match matches a pod against Current (see Set.Match) and logs Match.Warning if any.
func (l *Loader) Match(namespace string, podLabels map[string]string) Match {
	m := l.Current().Match(namespace, podLabels)
	if w := m.Warning(); w != "" {
		l.opts.Logger.Warn(w)
	}
	return m
}

// Errors are the current Set's errors: what `podsnapshot policies` prints.
func (l *Loader) Errors() []error { return l.Current().Errors }

// dirStamp summarizes what a reload depends on: each policy file's name, size and
// modification time, or the directory's absence or read error.
func dirStamp(dir string) string {
	files, fileErrs, err := policyFiles(dir)
	if errors.Is(err, os.ErrNotExist) {
		return "missing"
	}
	if err != nil {
		return "error: " + err.Error()
	}
	var b strings.Builder
	for _, e := range fileErrs {
		fmt.Fprintf(&b, "%v\n", e)
	}
	for _, f := range files {
		fmt.Fprintf(&b, "%s\x00%d\x00%d\n", f.path, f.info.Size(), f.info.ModTime().UnixNano())
	}
	return b.String()
}
