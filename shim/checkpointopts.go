package shim

import (
	"fmt"
	"strings"

	runcopts "github.com/containerd/containerd/api/types/runc/options"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
)

// checkOptions checks containerd's checkpoint options (runc's CheckpointOptions, from
// `ctr task checkpoint`'s flags) against what a checkpoint here does: the snapshot goes
// to the store of the pod's policy, and the policy's postCheckpoint (stop: true) decides
// whether the pod goes on. A flag asking for anything else is refused, naming it, rather
// than ignored. The request's own Path (a directory containerd makes for its checkpoint
// image) stays empty: nothing to refuse there.
func checkOptions(opts *ptypes.Any, stop bool) error {
	if opts == nil || opts.GetTypeUrl() == "" {
		return nil
	}
	v, err := typeurl.UnmarshalAny(opts)
	if err != nil {
		return fmt.Errorf("%w: checkpoint options of type %s: %w", errdefs.ErrInvalidArgument, opts.GetTypeUrl(), err)
	}
	o, ok := v.(*runcopts.CheckpointOptions)
	if !ok {
		return fmt.Errorf("%w: checkpoint options of type %s: want runc's CheckpointOptions", errdefs.ErrInvalidArgument, opts.GetTypeUrl())
	}
	var refused []string
	if o.Exit && !stop {
		refused = append(refused, "exit (ctr --exit): the pod's policy has postCheckpoint: resume; use a policy with postCheckpoint: stop")
	}
	for _, f := range []struct {
		set  bool
		name string
	}{
		{o.ImagePath != "", "image_path (ctr --image-path)"},
		{o.WorkPath != "", "work_path (ctr --work-path)"},
		{o.ParentPath != "", "parent_path"},
		{o.OpenTcp, "open_tcp"},
		{o.ExternalUnixSockets, "external_unix_sockets"},
		{o.Terminal, "terminal"},
		{o.FileLocks, "file_locks"},
		{len(o.EmptyNamespaces) > 0, "empty_namespaces"},
		{o.CgroupsMode != "", "cgroups_mode"},
	} {
		if f.set {
			refused = append(refused, f.name)
		}
	}
	if len(refused) > 0 {
		return fmt.Errorf("%w: checkpoint option %s not supported: a pod snapshot goes to the store of the pod's policy, and its postCheckpoint decides whether the pod goes on",
			errdefs.ErrInvalidArgument, strings.Join(refused, ", "))
	}
	return nil
}
