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

// Uninstall takes podsnapshot off the node (see the package doc) and logs one summary
// line, "uninstall complete: ...". It refuses while podsnapshot shims run, unless
// o.Force: their pods would lose the binaries and the handler under them. Files whose
// content is not Install's (a user's shim config, another build's binary) are left, each
// named in a warning and in Result.Kept.
func Uninstall(ctx context.Context, o Options) (Result, error) {
	var res Result
	if err := o.validate(); err != nil {
		return res, err
	}
	if !o.Force {
		if err := o.refuseRunningShims(); err != nil {
			return res, err
		}
	}
	// The label first: nothing new is scheduled here while the handler goes away.
	if err := o.Labeler.RemoveLabel(ctx, o.NodeName, o.NodeLabel); err != nil {
		return res, err
	}
	o.Log.Infof("node %s: label %s removed", o.NodeName, o.NodeLabel)

	why := ""
	switch err := os.Remove(o.host(o.dropin())); {
	case err == nil:
		why = "drop-in " + o.dropin() + " removed"
		res.changed("containerd drop-in %s (removed)", o.dropin())
		o.Log.Infof("containerd drop-in %s: removed", o.dropin())
	case errors.Is(err, fs.ErrNotExist):
		o.Log.Infof("containerd drop-in %s: absent", o.dropin())
	default:
		return res, fmt.Errorf("containerd drop-in %s: %w", o.dropin(), err)
	}
	wctx, cancel := context.WithTimeout(ctx, o.WaitTimeout)
	defer cancel()
	if err := o.restartAndWait(wctx, &res, why, false); err != nil {
		return res, err
	}

	for _, name := range Binaries {
		path := filepath.Join(o.BinDir, name)
		if err := o.removeOurs("binary", path, nil, filepath.Join(o.SourceDir, name), &res); err != nil {
			return res, err
		}
	}
	if err := o.removeOurs("shim config", o.ShimConfig, shimConfigText, "", &res); err != nil {
		return res, err
	}
	// Any other containerd config is the node's own, which Install only read: no warning.
	path := o.ContainerdConfig
	if removed, differs, err := removeIfSame(o.host(path), containerdConfigText(o.DropinDir), ""); err != nil {
		return res, fmt.Errorf("containerd config %s: %w", path, err)
	} else if removed {
		o.Log.Infof("containerd config %s: removed", path)
		res.changed("containerd config %s (removed)", path)
	} else if differs {
		o.Log.Infof("containerd config %s: not the one install creates, left as it is", path)
	}
	o.Log.Infof("uninstall complete: %s; node %s label %s removed", res.summary(), o.NodeName, o.NodeLabel)
	return res, nil
}

// refuseRunningShims returns an error listing the running shims, if any.
func (o *Options) refuseRunningShims() error {
	if o.Processes == nil {
		return errors.New("process lister is required without force")
	}
	shims, err := o.Processes.Shims()
	if err != nil {
		return err
	}
	if len(shims) == 0 {
		return nil
	}
	list := make([]string, len(shims))
	for i, s := range shims {
		list[i] = fmt.Sprintf("pid %d -id %s", s.PID, s.ID)
	}
	return fmt.Errorf("%d podsnapshot shims still run (%s): delete their pods first, or pass --force to leave them running without their binaries and handler",
		len(shims), strings.Join(list, ", "))
}

// removeOurs removes the host path when its content is want (or, with want nil, the
// content of wantPath in this process's filesystem), and records and logs what it did:
// removed, absent, or kept because it differs.
func (o *Options) removeOurs(what, path string, want []byte, wantPath string, res *Result) error {
	removed, differs, err := removeIfSame(o.host(path), want, wantPath)
	switch {
	case err != nil:
		return fmt.Errorf("%s %s: %w", what, path, err)
	case removed:
		o.Log.Infof("%s %s: removed", what, path)
		res.changed("%s %s (removed)", what, path)
	case differs:
		o.Log.Warnf("%s %s: left in place: its content is not what install wrote", what, path)
		res.Kept = append(res.Kept, what+" "+path)
	default:
		o.Log.Infof("%s %s: absent", what, path)
	}
	return nil
}
