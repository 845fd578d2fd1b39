package kube

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// startKubelet prepares the host for the kubelet and starts it: it records
// KernelSettings and whether ContainerLogLinks exists (Close puts both back), creates
// the cgroup root in every hierarchy, writes the KubeletConfiguration and waits for
// /healthz, then for the Node to be Ready with a heartbeat posted after this start (a
// Ready condition left from an earlier kubelet does not count).
func (c *Cluster) startKubelet() error {
	settings, err := readSettings()
	if err != nil {
		return err
	}
	c.settled = settings
	if _, err := os.Stat(ContainerLogLinks); errors.Is(err, fs.ErrNotExist) {
		c.madeLog = true
	}
	if err := makeCgroupRoot(c.CgroupRoot); err != nil {
		return err
	}
	config := filepath.Join(c.Dir, "kubelet.yaml")
	yaml := kubeletConfig(kubeletSettings{
		endpoint: "unix://" + c.opts.CRIEndpoint, cgroupRoot: "/" + c.CgroupRoot, address: c.NodeIP.String(),
		port: c.KubeletPort, healthzAddress: "127.0.0.1", healthzPort: c.KubeletHealthzPort, clientCA: c.pki.crt("ca"),
		podLogs: filepath.Join(c.Dir, "pod-logs"), pluginDir: filepath.Join(c.Dir, "kubelet-plugins"),
	})
	if err := os.WriteFile(config, []byte(yaml), 0o644); err != nil {
		return fmt.Errorf("kubelet config: %w", err)
	}
	since := time.Now().Truncate(time.Second) // heartbeats have second precision
	d, err := c.start("kubelet", "--config="+config, "--kubeconfig="+c.kubeconfig("kubelet"),
		"--root-dir="+c.KubeletDir, "--cert-dir="+filepath.Join(c.KubeletDir, "pki"),
		"--hostname-override="+c.NodeName, "--node-ip="+c.NodeIP.String(), "--v=2")
	if err != nil {
		return err
	}
	healthz := fmt.Sprintf("http://127.0.0.1:%d/healthz", c.KubeletHealthzPort)
	if err := c.waitFor(d, "kubelet healthz", func() error { return httpOK(healthz) }); err != nil {
		return err
	}
	return c.waitFor(d, "node "+c.NodeName+" Ready", func() error { return c.nodeReadyNamed(c.NodeName, since) })
}

// kubeletSettings are what differs between kubelets in kubeletConfig.
type kubeletSettings struct {
	endpoint, cgroupRoot, address, healthzAddress, clientCA, podLogs, pluginDir string
	port, healthzPort                                                           int
}

// kubeletConfig is the KubeletConfiguration (kubelet.config.k8s.io/v1beta1) of s:
//
//   - the CRI containerd as runtime and image service; cgroupfs driver below CgroupRoot
//     (which containerd's runc default also reports over CRI);
//   - cgroup v1 and swap allowed (the test machines have both);
//   - listening on the node IP (the API server's way in, client certificates from the
//     cluster CA, authorization by webhook), healthz where s says, no read-only port;
//   - pod logs and volume plugins below Dir rather than /var/log/pods and
//     /usr/libexec/kubernetes;
//   - no eviction and no image garbage collection: a full disk on a test machine must
//     not evict the test's pods nor delete the test images (which no registry can give
//     back: pods use imagePullPolicy Never).
func kubeletConfig(s kubeletSettings) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: %[1]q
imageServiceEndpoint: %[1]q
cgroupDriver: cgroupfs
cgroupRoot: %[2]q
failCgroupV1: false
failSwapOn: false
address: %[3]q
port: %[4]d
readOnlyPort: 0
healthzBindAddress: %[9]q
healthzPort: %[5]d
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[6]q}
authorization:
  mode: Webhook
podLogsDir: %[7]q
volumePluginDir: %[8]q
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
`, s.endpoint, s.cgroupRoot, s.address, s.port, s.healthzPort, s.clientCA, s.podLogs, s.pluginDir, s.healthzAddress)
}

// nodeReadyNamed returns nil once Node name's Ready condition is True with a heartbeat
// at or after since.
func (c *Cluster) nodeReadyNamed(name string, since time.Time) error {
	b, err := c.get("/api/v1/nodes/" + name)
	if err != nil {
		return err
	}
	var node struct {
		Status struct {
			Conditions []struct {
				Type, Status, Reason, Message string
				LastHeartbeatTime             time.Time
			}
		}
	}
	if err := json.Unmarshal(b, &node); err != nil {
		return fmt.Errorf("node %s: %w", name, err)
	}
	for _, cond := range node.Status.Conditions {
		if cond.Type != "Ready" {
			continue
		}
		if cond.Status != "True" {
			return fmt.Errorf("node %s Ready=%s: %s: %s", name, cond.Status, cond.Reason, cond.Message)
		}
		if cond.LastHeartbeatTime.Before(since) {
			return fmt.Errorf("node %s: last heartbeat %s is older than the kubelet", name, cond.LastHeartbeatTime)
		}
		return nil
	}
	return fmt.Errorf("node %s has no Ready condition yet", name)
}

// applyRuntimeClass creates RuntimeClass (handler RuntimeClass, the CRI handler name).
func (c *Cluster) applyRuntimeClass() error {
	body := fmt.Sprintf(`{"apiVersion":"node.k8s.io/v1","kind":"RuntimeClass","metadata":{"name":%q},"handler":%q}`,
		RuntimeClass, RuntimeClass)
	if _, err := c.post("/apis/node.k8s.io/v1/runtimeclasses", body); err != nil {
		return fmt.Errorf("RuntimeClass %s: %w", RuntimeClass, err)
	}
	c.logf("kube: RuntimeClass %s applied", RuntimeClass)
	return nil
}
