package snapkey

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// pod returns the input of a two-container pod as CRI would create it, with per-pod values
// (IDs, pod name and UID, cgroup and log paths, mount sources) derived from id.
func pod(id string) Input {
	podUID := "uid-" + id
	podDir := "/var/lib/kubelet/pods/" + podUID
	cri := func(extra map[string]string) map[string]string {
		a := map[string]string{
			"io.kubernetes.cri.sandbox-id":            "sandbox-" + id,
			"io.kubernetes.cri.sandbox-name":          "web-" + id,
			"io.kubernetes.cri.sandbox-uid":           podUID,
			"io.kubernetes.cri.sandbox-namespace":     "default",
			"io.kubernetes.cri.sandbox-log-directory": "/var/log/pods/default_web-" + id + "_" + podUID,
			"dev.gvisor.spec.mount.cache.source":      podDir + "/volumes/kubernetes.io~empty-dir/cache",
			"dev.gvisor.spec.mount.cache.type":        "tmpfs",
			"dev.gvisor.spec.mount.cache.share":       "pod",
			"dev.gvisor.internal.checkpoint.path":     "/run/podsnapshot/" + id,
		}
		for k, v := range extra {
			a[k] = v
		}
		return a
	}
	env := []string{
		"PATH=/usr/bin:/bin",
		"HOSTNAME=web-" + id,
		"APP_MODE=serve",
		"APP_PORT=8080",
		"KUBERNETES_SERVICE_HOST=10.0.0.1",
		"KUBERNETES_SERVICE_PORT=443",
		"KUBERNETES_SERVICE_PORT_HTTPS=443",
		"KUBERNETES_PORT=tcp://10.0.0.1:443",
		"KUBERNETES_PORT_443_TCP=tcp://10.0.0.1:443",
		"KUBERNETES_PORT_443_TCP_PROTO=tcp",
		"KUBERNETES_PORT_443_TCP_PORT=443",
		"KUBERNETES_PORT_443_TCP_ADDR=10.0.0.1",
	}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/containerd/sandboxes/sandbox-" + id + "/hosts", Options: []string{"rbind", "rprivate", "rw"}},
		{Destination: "/etc/hostname", Type: "bind", Source: "/var/lib/containerd/sandboxes/sandbox-" + id + "/hostname", Options: []string{"rbind", "rprivate", "rw"}},
		{Destination: "/etc/resolv.conf", Type: "bind", Source: "/var/lib/containerd/sandboxes/sandbox-" + id + "/resolv.conf", Options: []string{"rbind", "rprivate", "rw"}},
		{Destination: "/dev/termination-log", Type: "bind", Source: podDir + "/containers/app/" + id, Options: []string{"rbind", "rprivate", "rw"}},
		{Destination: "/var/run/secrets/kubernetes.io/serviceaccount", Type: "bind", Source: podDir + "/volumes/kubernetes.io~projected/kube-api-access-" + id, Options: []string{"rbind", "rprivate", "ro"}},
		{Destination: "/cache", Type: "bind", Source: podDir + "/volumes/kubernetes.io~empty-dir/cache", Options: []string{"rbind", "rprivate", "rw"}},
	}
	spec := func(args []string, extra map[string]string) *specs.Spec {
		return &specs.Spec{
			Version:  "1.2.0",
			Hostname: "web-" + id,
			Process: &specs.Process{
				Args: args, Cwd: "/app", Env: append([]string(nil), env...),
				User: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{1000, 5}},
			},
			Root:        &specs.Root{Path: "/run/containerd/io.containerd.runtime.v2.task/k8s.io/" + id + "/rootfs"},
			Mounts:      append([]specs.Mount(nil), mounts...),
			Annotations: cri(extra),
			Linux:       &specs.Linux{CgroupsPath: "kubepods-burstable-pod" + podUID + ".slice:cri-containerd:" + id},
		}
	}
	return Input{
		Namespace:   "default",
		Policy:      "my-app",
		GroupLabels: []string{"app", "version"},
		PodLabels:   map[string]string{"app": "my-app", "version": "v1", "pod-template-hash": "abc-" + id},
		Containers: []Container{
			{Name: "app", Image: "docker.io/library/app:1", ImageDigest: "sha256:" + strings.Repeat("a", 64),
				Spec: spec([]string{"/app/server", "--port=8080"}, map[string]string{
					"io.kubernetes.cri.container-name": "app", "io.kubernetes.cri.container-type": "container",
					"io.kubernetes.cri.log-path": "/var/log/pods/" + podUID + "/app/0.log"})},
			{Name: "sidecar", Image: "docker.io/library/proxy:2", ImageDigest: "sha256:" + strings.Repeat("b", 64),
				Spec: spec([]string{"/proxy"}, nil)},
			{Name: "sandbox", Image: "registry.k8s.io/pause:3.10", ImageDigest: "sha256:" + strings.Repeat("c", 64), Sandbox: true,
				Spec: spec([]string{"/pause"}, map[string]string{"dev.gvisor.spec.rootfs.source": "/run/" + id})},
		},
	}
}

func key(t *testing.T, in Input) string {
	t.Helper()
	k, err := Compute(in)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func app(in *Input) *specs.Spec { return in.Containers[0].Spec }

func TestKeySame(t *testing.T) {
	base := key(t, pod("one"))
	if len(base) != 64 {
		t.Fatalf("key %q is not 64 hex digits", base)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*Input)
	}{
		{"another pod: container and sandbox IDs, pod name and UID, cgroup and log paths, mount sources", func(in *Input) { *in = pod("two") }},
		{"containers in another order", func(in *Input) {
			c := in.Containers
			c[0], c[1], c[2] = c[2], c[0], c[1]
		}},
		{"service-link variables of another service", func(in *Input) {
			app(in).Process.Env = append(app(in).Process.Env, "MY_DB_SERVICE_HOST=10.0.0.9", "MY_DB_SERVICE_PORT=5432",
				"MY_DB_PORT=tcp://10.0.0.9:5432", "MY_DB_PORT_5432_TCP=tcp://10.0.0.9:5432", "MY_DB_PORT_5432_TCP_PROTO=tcp",
				"MY_DB_PORT_5432_TCP_PORT=5432", "MY_DB_PORT_5432_TCP_ADDR=10.0.0.9", "MY_DB_SERVICE_PORT_SQL=5432")
		}},
		{"service-link variables removed", func(in *Input) {
			var env []string
			for _, kv := range app(in).Process.Env {
				if !strings.HasPrefix(kv, "KUBERNETES_") {
					env = append(env, kv)
				}
			}
			app(in).Process.Env = env
		}},
		{"HOSTNAME", func(in *Input) { app(in).Process.Env = append(app(in).Process.Env, "HOSTNAME=other") }},
		{"env order", func(in *Input) {
			e := app(in).Process.Env
			e[0], e[len(e)-1] = e[len(e)-1], e[0]
		}},
		{"mount order", func(in *Input) {
			m := app(in).Mounts
			m[0], m[len(m)-1] = m[len(m)-1], m[0]
		}},
		{"non-gvisor annotation", func(in *Input) { app(in).Annotations["io.kubernetes.cri.image-name"] = "x" }},
		{"per-pod gvisor mount source", func(in *Input) { app(in).Annotations["dev.gvisor.spec.mount.cache.source"] = "/elsewhere" }},
		{"a mount hint's tmpfs size (kubelet's tmpfs size follows the node)", func(in *Input) {
			app(in).Annotations["dev.gvisor.spec.mount.mem.options"] = "size=8388608"
		}},
		{"checkpoint annotations set by the shim", func(in *Input) { app(in).Annotations["dev.gvisor.internal.checkpoint.enable"] = "true" }},
		{"a label outside the grouping labels", func(in *Input) { in.PodLabels["release"] = "blue" }},
		{"rootfs path", func(in *Input) { app(in).Root.Path = "/elsewhere" }},
		{"linux section (cgroups, namespaces)", func(in *Input) {
			app(in).Linux.Namespaces = []specs.LinuxNamespace{{Type: "network", Path: "/proc/1/ns/net"}}
		}},
		{"additional gids order", func(in *Input) { app(in).Process.User.AdditionalGids = []uint32{5, 1000} }},
		{"duplicate grouping label in the policy", func(in *Input) { in.GroupLabels = []string{"version", "app", "app"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := pod("one")
			tc.mutate(&in)
			if got := key(t, in); got != base {
				a, _ := Canonical(pod("one"))
				b, _ := Canonical(in)
				t.Errorf("key changed\n  %s\n  %s", a, b)
			}
		})
	}
}

func TestKeyDifferent(t *testing.T) {
	base := key(t, pod("one"))
	for _, tc := range []struct {
		name   string
		mutate func(*Input)
	}{
		{"image digest", func(in *Input) { in.Containers[0].ImageDigest = "sha256:" + strings.Repeat("d", 64) }},
		{"image reference", func(in *Input) { in.Containers[0].Image = "docker.io/library/app:2" }},
		{"sandbox image digest", func(in *Input) { in.Containers[2].ImageDigest = "sha256:" + strings.Repeat("e", 64) }},
		{"args", func(in *Input) { app(in).Process.Args = []string{"/app/server", "--port=9090"} }},
		{"args order", func(in *Input) { app(in).Process.Args = []string{"--port=8080", "/app/server"} }},
		{"env value", func(in *Input) { app(in).Process.Env[2] = "APP_MODE=batch" }},
		{"env added", func(in *Input) { app(in).Process.Env = append(app(in).Process.Env, "DEBUG=1") }},
		{"an application's own _PORT variable", func(in *Input) { app(in).Process.Env[3] = "APP_PORT=9090" }},
		{"cwd", func(in *Input) { app(in).Process.Cwd = "/" }},
		{"user", func(in *Input) { app(in).Process.User.UID = 0 }},
		{"mount added", func(in *Input) {
			app(in).Mounts = append(app(in).Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "/data", Options: []string{"rbind"}})
		}},
		{"mount destination", func(in *Input) { app(in).Mounts[6].Destination = "/cache2" }},
		{"mount type", func(in *Input) { app(in).Mounts[6].Type = "tmpfs" }},
		{"mount options", func(in *Input) { app(in).Mounts[6].Options = []string{"rbind", "rprivate", "ro"} }},
		{"read-only root", func(in *Input) { app(in).Root.Readonly = true }},
		{"dev.gvisor annotation", func(in *Input) { app(in).Annotations["dev.gvisor.spec.mount.cache.share"] = "container" }},
		{"a mount hint's options other than size", func(in *Input) {
			app(in).Annotations["dev.gvisor.spec.mount.mem.options"] = "size=8388608,ro"
		}},
		{"dev.gvisor annotation added", func(in *Input) { app(in).Annotations["dev.gvisor.flag.overlay2"] = "root:memory" }},
		{"grouping label value", func(in *Input) { in.PodLabels["version"] = "v2" }},
		{"grouping label absent", func(in *Input) { delete(in.PodLabels, "version") }},
		{"policy name", func(in *Input) { in.Policy = "other" }},
		{"policy namespace", func(in *Input) { in.Namespace = "prod" }},
		{"container name", func(in *Input) { in.Containers[1].Name = "proxy" }},
		{"container removed", func(in *Input) { in.Containers = in.Containers[:2] }},
		{"sandbox role", func(in *Input) { in.Containers[2].Sandbox = false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := pod("one")
			tc.mutate(&in)
			if got := key(t, in); got == base {
				t.Error("key did not change")
			}
		})
	}
	// Empty and absent label values differ.
	a, b := pod("one"), pod("one")
	a.PodLabels["version"] = ""
	delete(b.PodLabels, "version")
	if key(t, a) == key(t, b) {
		t.Error("an empty grouping label value and an absent one give the same key")
	}
}

func TestKeyErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Input)
		want   string
	}{
		{"no containers", func(in *Input) { in.Containers = nil }, "no containers"},
		{"no spec", func(in *Input) { in.Containers[1].Spec = nil }, `container "sidecar" has no OCI spec`},
		{"no name", func(in *Input) { in.Containers[1].Name = "" }, "container 1 has no name"},
		{"same name", func(in *Input) { in.Containers[1].Name = "app" }, `two containers named "app"`},
		{"two sandboxes", func(in *Input) { in.Containers[0].Sandbox = true }, "2 sandbox containers"},
	} {
		in := pod("one")
		tc.mutate(&in)
		if _, err := Compute(in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v; want %q", tc.name, err, tc.want)
		}
	}
}

func TestServiceLink(t *testing.T) {
	for _, tc := range []struct {
		kv   string
		keep bool
	}{
		{"HOSTNAME=x", false},
		{"REDIS_MASTER_SERVICE_HOST=10.0.0.11", false},
		{"REDIS_MASTER_SERVICE_PORT=6379", false},
		{"REDIS_MASTER_SERVICE_PORT_REDIS=6379", false},
		{"REDIS_MASTER_PORT=tcp://10.0.0.11:6379", false},
		{"REDIS_MASTER_PORT_6379_TCP=tcp://10.0.0.11:6379", false},
		{"REDIS_MASTER_PORT_6379_UDP_PROTO=udp", false},
		{"REDIS_MASTER_PORT_6379_SCTP_PORT=6379", false},
		{"REDIS_MASTER_PORT_6379_TCP_ADDR=10.0.0.11", false},
		{"REDIS_PORT=6379", true},
		{"PORT=8080", true},
		{"HOSTNAMES=a,b", true},
		{"MY_SERVICE_HOSTNAME=x", true},
		{"PATH=/bin", true},
	} {
		if got := keepEnv(tc.kv); got != tc.keep {
			t.Errorf("keepEnv(%q) = %v; want %v", tc.kv, got, tc.keep)
		}
	}
}

func TestContainerKey(t *testing.T) {
	ck := func(in Input, i int) string {
		t.Helper()
		k, err := ContainerKey(in.Containers[i])
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	one, two := pod("one"), pod("two")
	if a, b := ck(one, 0), ck(two, 0); a != b || len(a) != 64 {
		t.Fatalf("replicas of one container differ: %s %s", a, b)
	}
	if ck(one, 0) == ck(one, 1) {
		t.Fatal("two different containers have one key")
	}
	changed := pod("two")
	app(&changed).Process.Args = []string{"/app/server", "--port=9090"}
	if ck(one, 0) == ck(changed, 0) {
		t.Fatal("changed args kept the container key")
	}
	if _, err := ContainerKey(Container{Name: "x"}); err == nil || !strings.Contains(err.Error(), `"x" has no OCI spec`) {
		t.Fatalf("no spec: %v", err)
	}
	if _, err := ContainerKey(Container{Spec: &specs.Spec{}}); err == nil {
		t.Fatal("no name: no error")
	}
}
