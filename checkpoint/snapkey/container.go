package snapkey

import (
	"regexp"
	"sort"
	"strings"
)

// canonicalContainer is the part of one container that enters the key.
//
// Deliberately left out, because they differ between replicas of one workload or between
// nodes and a restore re-creates them: container and sandbox IDs; spec.hostname and
// domainname (the pod name); spec.linux (cgroup path, namespaces paths, devices, resources,
// seccomp, sysctl: applied by runsc from the new spec); mount sources (per-pod paths such as
// /var/lib/kubelet/pods/<uid>/...); annotations outside dev.gvisor.* (CRI's pod name, UID,
// log path, sandbox ID); and the per-pod dev.gvisor.* annotations listed in perPodAnnotation.
type canonicalContainer struct {
	// Name is the container name.
	Name string `json:"name"`
	// Sandbox marks the sandbox container.
	Sandbox bool `json:"sandbox"`
	// Image and ImageDigest: the root file system the saved state was built on.
	Image       string `json:"image"`
	ImageDigest string `json:"imageDigest"`
	// Args is spec.process.args: the program the saved state is running.
	Args []string `json:"args"`
	// Cwd is spec.process.cwd.
	Cwd string `json:"cwd"`
	// User is spec.process.user: uid, gid, sorted additional gids, umask, username.
	User canonicalUser `json:"user"`
	// Env is spec.process.env without HOSTNAME and Kubernetes service-link variables
	// (see isServiceLink), sorted.
	Env []string `json:"env"`
	// Mounts are spec.mounts as destination, type and options (never the source), sorted by
	// destination, then type, then options. Per-pod mounts (/etc/hostname, /etc/hosts,
	// /etc/resolv.conf, the service-account token directory, /dev/termination-log) thus
	// count only by their destination, type and options, which every replica shares; their
	// per-pod sources never enter the key.
	Mounts []canonicalMount `json:"mounts"`
	// RootReadonly is spec.root.readonly.
	RootReadonly bool `json:"rootReadonly"`
	// Annotations are the dev.gvisor.* annotations (runsc configuration) except the
	// per-pod ones (see perPodAnnotation); JSON sorts them by name.
	Annotations map[string]string `json:"annotations"`
}

type canonicalUser struct {
	UID            uint32   `json:"uid"`
	GID            uint32   `json:"gid"`
	AdditionalGids []uint32 `json:"additionalGids"`
	Umask          *uint32  `json:"umask"`
	Username       string   `json:"username"`
}

type canonicalMount struct {
	Destination string   `json:"destination"`
	Type        string   `json:"type"`
	Options     []string `json:"options"`
}

func canonicalize(c Container) canonicalContainer {
	s := c.Spec
	out := canonicalContainer{
		Name:        c.Name,
		Sandbox:     c.Sandbox,
		Image:       c.Image,
		ImageDigest: c.ImageDigest,
		Args:        []string{},
		Env:         []string{},
		Mounts:      []canonicalMount{},
		Annotations: map[string]string{},
	}
	if p := s.Process; p != nil {
		out.Args = append(out.Args, p.Args...)
		out.Cwd = p.Cwd
		out.User = canonicalUser{UID: p.User.UID, GID: p.User.GID, Umask: p.User.Umask, Username: p.User.Username,
			AdditionalGids: append([]uint32{}, p.User.AdditionalGids...)}
		sort.Slice(out.User.AdditionalGids, func(i, j int) bool { return out.User.AdditionalGids[i] < out.User.AdditionalGids[j] })
		for _, kv := range p.Env {
			if keepEnv(kv) {
				out.Env = append(out.Env, kv)
			}
		}
		sort.Strings(out.Env)
	}
	for _, m := range s.Mounts {
		out.Mounts = append(out.Mounts, canonicalMount{Destination: m.Destination, Type: m.Type, Options: append([]string{}, m.Options...)})
	}
	sort.SliceStable(out.Mounts, func(i, j int) bool {
		a, b := out.Mounts[i], out.Mounts[j]
		if a.Destination != b.Destination {
			return a.Destination < b.Destination
		}
		if a.Type != b.Type {
			return a.Type < b.Type
		}
		return strings.Join(a.Options, ",") < strings.Join(b.Options, ",")
	})
	if s.Root != nil {
		out.RootReadonly = s.Root.Readonly
	}
	for k, v := range s.Annotations {
		if !strings.HasPrefix(k, "dev.gvisor.") || perPodAnnotation(k) {
			continue
		}
		if strings.HasPrefix(k, "dev.gvisor.spec.mount.") && strings.HasSuffix(k, ".options") {
			if v = withoutSize(v); v == "" {
				continue
			}
		}
		out.Annotations[k] = v
	}
	return out
}

// withoutSize drops size=... from a mount hint's options: a tmpfs's size is a limit, not
// state (a restore brings the saved files back whatever the new limit), and for an emptyDir
// of medium Memory the shim sets it from kubelet's tmpfs, whose size without a sizeLimit
// follows the node's memory: in the key it would keep pods from restoring on other nodes.
func withoutSize(options string) string {
	var kept []string
	for _, o := range strings.Split(options, ",") {
		if !strings.HasPrefix(o, "size=") {
			kept = append(kept, o)
		}
	}
	return strings.Join(kept, ",")
}

// perPodAnnotation is true for dev.gvisor.* annotations that differ per pod by design:
// dev.gvisor.internal.checkpoint.* (set by the shim, naming a fresh local directory) and
// dev.gvisor.spec.mount.<name>.source / dev.gvisor.spec.rootfs.source (host paths under
// the pod's directory). The other dev.gvisor.spec.mount.<name>.* annotations (type, share,
// options) stay in the key.
func perPodAnnotation(k string) bool {
	return strings.HasPrefix(k, "dev.gvisor.internal.checkpoint.") ||
		(strings.HasPrefix(k, "dev.gvisor.spec.") && strings.HasSuffix(k, ".source"))
}

// Kubernetes service-link variables, for a service "my-svc" (name upper-cased, '-' -> '_'):
//
//	MY_SVC_SERVICE_HOST=10.0.0.11
//	MY_SVC_SERVICE_PORT=8080            MY_SVC_SERVICE_PORT_<PORTNAME>=8080
//	MY_SVC_PORT=tcp://10.0.0.11:8080
//	MY_SVC_PORT_8080_TCP=tcp://10.0.0.11:8080
//	MY_SVC_PORT_8080_TCP_PROTO=tcp      MY_SVC_PORT_8080_TCP_PORT=8080
//	MY_SVC_PORT_8080_TCP_ADDR=10.0.0.11
//
// They describe the cluster's services at pod start, not the workload. <SVC>_PORT is
// recognized only with a proto://address value, so an application's own APP_PORT=8080
// stays in the key.
var (
	serviceHostOrPort = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*_SERVICE_(HOST|PORT(_[A-Z0-9_]+)?)$`)
	servicePortFamily = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*_PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?$`)
	servicePortURL    = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*_PORT$`)
	serviceURLValue   = regexp.MustCompile(`^(tcp|udp|sctp)://`)
)

// isServiceLink reports whether NAME=value is a Kubernetes service-link variable.
func isServiceLink(name, value string) bool {
	return serviceHostOrPort.MatchString(name) || servicePortFamily.MatchString(name) ||
		(servicePortURL.MatchString(name) && serviceURLValue.MatchString(value))
}

// keepEnv drops HOSTNAME (the pod name) and service-link variables.
func keepEnv(kv string) bool {
	name, value, _ := strings.Cut(kv, "=")
	return name != "HOSTNAME" && !isServiceLink(name, value)
}
