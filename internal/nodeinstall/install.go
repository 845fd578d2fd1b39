package nodeinstall

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Install puts podsnapshot on the node (see the package doc for the steps) and logs one
// summary line, "install complete: ...". An error names the file, the socket or the node
// it is about; what was done before it stays done, and a new run picks up from there.
func Install(ctx context.Context, o Options) (Result, error) {
	var res Result
	if err := o.validate(); err != nil {
		return res, err
	}
	for _, name := range Binaries {
		dst := filepath.Join(o.BinDir, name)
		state, err := installBinary(filepath.Join(o.SourceDir, name), o.host(dst))
		if err != nil {
			return res, err
		}
		o.Log.Infof("binary %s: %s", dst, state)
		if state != stateUnchanged {
			res.changed("binary %s (%s)", dst, state)
		}
	}
	if wrote, err := o.installShimConfig(); err != nil {
		return res, err
	} else if wrote {
		res.changed("shim config %s (installed)", o.ShimConfig)
	}

	// The drop-in is written before containerd's config is checked, so a config without
	// the import fails after the drop-in is in place: harmless, since containerd reads
	// it only once imported, and once the user adds the import the next run finds the
	// running containerd without the handler and restarts it (restartAndWait).
	var why []string
	if changed, err := o.installDropin(); err != nil {
		return res, err
	} else if changed {
		why = append(why, "drop-in "+o.dropin()+" changed")
		res.changed("containerd drop-in %s", o.dropin())
	}
	if created, err := o.ensureImport(); err != nil {
		return res, err
	} else if created {
		why = append(why, "config "+o.ContainerdConfig+" created")
		res.changed("containerd config %s (created)", o.ContainerdConfig)
	}

	wctx, cancel := context.WithTimeout(ctx, o.WaitTimeout)
	defer cancel()
	if err := o.restartAndWait(wctx, &res, strings.Join(why, ", "), true); err != nil {
		return res, err
	}
	if err := o.Labeler.SetLabel(ctx, o.NodeName, o.NodeLabel, "true"); err != nil {
		return res, err
	}
	o.Log.Infof("install complete: %s; node %s labelled %s=true", res.summary(), o.NodeName, o.NodeLabel)
	return res, nil
}

// installShimConfig writes shimConfigText (mode 0644, parents created) when there is no
// shim config, and reports whether it did. An existing file is the user's: never
// overwritten, never checked here (the shim reports its errors, naming the key).
func (o *Options) installShimConfig() (wrote bool, err error) {
	path := o.ShimConfig
	if _, err := os.Lstat(o.host(path)); err == nil {
		o.Log.Infof("shim config %s: present, left as it is", path)
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("shim config %s: %w", path, err)
	}
	if err := writeFileAtomic(o.host(path), shimConfigText, 0o644); err != nil {
		return false, fmt.Errorf("shim config %s: %w", path, err)
	}
	o.Log.Infof("shim config %s: installed (all defaults)", path)
	return true, nil
}
