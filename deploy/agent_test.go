package deploy

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// containerdSocket is where the agent reaches containerd (its --containerd-address).
const containerdSocket = "/run/containerd/containerd.sock"

// TestAgentPrivileges: the agent container runs as root without any capability (every
// file it writes or removes is root's, with owner permissions), and of containerd's
// /run/containerd it mounts only the socket, a hostPath of type Socket: not the shims'
// sockets (s/), nor the task bundles. A socket mount goes stale when containerd makes a
// new socket; the liveness probe (/healthz, which checks containerd) restarts the
// container then, with a fresh mount.
func TestAgentPrivileges(t *testing.T) {
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(AgentDaemonSet, &ds); err != nil {
		t.Fatalf("kubernetes/agent.yaml: %v", err)
	}
	spec := ds.Spec.Template.Spec
	i := slices.IndexFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == "agent" })
	if i < 0 {
		t.Fatal("kubernetes/agent.yaml: no container agent")
	}
	c := spec.Containers[i]
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("agent capabilities %+v, want drop [ALL] and none added", sc.Capabilities)
	}
	if sc == nil || sc.Privileged != nil && *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("agent securityContext %+v: want unprivileged, allowPrivilegeEscalation false", sc)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	var socket bool
	for _, m := range c.VolumeMounts {
		v := volumes[m.Name]
		if v.HostPath == nil {
			continue
		}
		if strings.HasPrefix(v.HostPath.Path, "/run/containerd") && v.HostPath.Path != containerdSocket {
			t.Errorf("agent mounts %s (volume %s) at %s: only containerd's socket is needed", v.HostPath.Path, m.Name, m.MountPath)
		}
		if v.HostPath.Path == containerdSocket {
			socket = m.MountPath == containerdSocket && v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathSocket
		}
	}
	if !socket {
		t.Errorf("agent: want containerd's socket mounted at %s from a hostPath of type Socket", containerdSocket)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
		t.Errorf("agent liveness probe %+v, want GET /healthz (it checks containerd)", p)
	}
}
