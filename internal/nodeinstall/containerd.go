package nodeinstall

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/podsnapshot/podsnapshot/deploy"
)

// installDropin writes the CRI handler drop-in when it is absent or its content differs
// (a user's edit is overwritten: the file is Install's), and reports whether it did.
func (o *Options) installDropin() (changed bool, err error) {
	want, err := dropinText(o.ShimConfig)
	if err != nil {
		return false, err
	}
	path := o.dropin()
	have, exists, err := readIfExists(o.host(path))
	if err != nil {
		return false, fmt.Errorf("containerd drop-in %s: %w", path, err)
	}
	if exists && bytes.Equal(have, want) {
		o.Log.Infof("containerd drop-in %s: unchanged", path)
		return false, nil
	}
	if err := writeFileAtomic(o.host(path), want, 0o644); err != nil {
		return false, fmt.Errorf("containerd drop-in %s: %w", path, err)
	}
	state := stateInstalled
	if exists {
		state = stateUpdated
	}
	o.Log.Infof("containerd drop-in %s: %s (runtime handler %q, ConfigPath %s)", path, state, deploy.RuntimeHandler, o.ShimConfig)
	return true, nil
}

// ensureImport makes sure containerd's config imports the drop-in. A node without a
// config gets one that only imports DropinDir's *.toml (created true). An existing one is
// only read, never edited: other tools (the node image, cloud-init, GKE) own it, and
// decoding and encoding TOML again would lose its comments and order. One without a
// matching import is an error saying what line to add.
func (o *Options) ensureImport() (created bool, err error) {
	path := o.ContainerdConfig
	data, exists, err := readIfExists(o.host(path))
	if err != nil {
		return false, fmt.Errorf("containerd config %s: %w", path, err)
	}
	if !exists {
		if err := writeFileAtomic(o.host(path), containerdConfigText(o.DropinDir), 0o644); err != nil {
			return false, fmt.Errorf("containerd config %s: %w", path, err)
		}
		o.Log.Infof("containerd config %s: created (there was none): defaults plus imports = [%q]", path, filepath.Join(o.DropinDir, "*.toml"))
		return true, nil
	}
	var cfg struct {
		Imports []string `toml:"imports"`
	}
	if _, err := toml.Decode(string(data), &cfg); err != nil {
		return false, fmt.Errorf("containerd config %s: %w", path, err)
	}
	if imports(path, cfg.Imports, o.dropin()) {
		o.Log.Infof("containerd config %s: imports %s", path, o.dropin())
		return false, nil
	}
	return false, fmt.Errorf("containerd config %s does not import %s: add the top-level line imports = [%q] before its first [table] (or add the pattern to its imports list), then delete this pod",
		path, o.dropin(), filepath.Join(o.DropinDir, "*.toml"))
}

// imports tells whether one of the import patterns of containerd's config at
// configPath names file, the way containerd resolves them (resolveImports in
// cmd/containerd/server/config): a relative one is joined to the config's directory
// first, and only one holding "*" is a glob; any other is a plain path.
func imports(configPath string, patterns []string, file string) bool {
	for _, p := range patterns {
		p = filepath.Clean(p)
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(configPath), p)
		}
		if !strings.Contains(p, "*") {
			if p == file {
				return true
			}
			continue
		}
		// A malformed pattern makes containerd itself fail to start; here it only
		// does not match.
		if ok, err := filepath.Match(p, file); err == nil && ok {
			return true
		}
	}
	return false
}
