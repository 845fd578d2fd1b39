package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/hostproc"
)

// watchedPrefixes name the processes Close must not leave behind (matched against comm
// and argv[0]'s base name, hostproc.Watched): etcd, kube-apiserver,
// kube-controller-manager ("kube-controller" as comm), kubelet, kubectl, and shims and
// runsc processes that mention the cluster's directory.
var watchedPrefixes = []string{"etcd", "kube", "containerd-shim", "runsc"}

// Close tears the cluster down in the order that leaves nothing behind, each step
// bounded in time and tried whatever the previous ones did:
//
//  1. stops kube-scheduler and kube-controller-manager (nothing makes new pods), then,
//     with the API server and kubelets up, deletes every pod and waits (at most 90 s), so
//     the kubelets stop them the normal way (CNI DEL, volumes unmounted);
//  2. stops the kubelet, then removes through CRI the sandboxes of kubelet pods still
//     there (io.kubernetes.pod.uid label): the kubelet removes the stopped sandbox of a
//     deleted pod only at its next garbage collection, a minute or so later;
//  3. stops kube-apiserver and etcd;
//  4. kills processes that still mention Dir, unmounts everything below Dir, removes the
//     cgroups below CgroupRoot in every hierarchy, writes back the KernelSettings the
//     kubelet changed, removes the kubelet's links from ContainerLogLinks (and the
//     directory if the kubelet made it), and releases LockPath;
//  5. checks Leftovers.
//
// It returns every failed step and leftover, joined; nil means the host is as Start
// found it. Dir itself stays (the logs are in it). A second call returns nil.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	daemons := map[string]*daemon{}
	for k, v := range c.daemons {
		daemons[k] = v
	}
	c.mu.Unlock()
	alive := func(name string) bool { d := daemons[name]; return d != nil && !d.Exited() }
	stop := func(name string, grace time.Duration) {
		if alive(name) {
			if killed := daemons[name].Stop(grace); killed {
				c.logf("kube: %s ignored SIGTERM for %v; killed it", name, grace)
			}
		}
	}

	var errs []error
	kubelets := alive("kubelet")
	for _, n := range c.Nodes {
		kubelets = kubelets || alive(n.Name+"/kubelet")
	}
	// The controllers first: a DaemonSet or a Deployment would make new pods for the
	// ones deleted below, which the kubelet could be starting while it stops.
	stop("kube-scheduler", 15*time.Second)
	stop("kube-controller-manager", 15*time.Second)
	if alive("kube-apiserver") && kubelets {
		c.logf("kube: deleting all pods")
		if _, err := c.Kubectl("delete", "pods", "--all", "--all-namespaces", "--wait=true", "--timeout=90s"); err != nil {
			errs = append(errs, fmt.Errorf("delete pods: %w", err))
		}
	}
	stop("kubelet", 30*time.Second)
	if c.opts.CRIEndpoint != "" && len(c.Nodes) == 0 {
		errs = append(errs, c.removeSandboxes(c.opts.CRIEndpoint)...)
	}
	errs = append(errs, c.closeNodes(stop)...)
	stop("kube-apiserver", 30*time.Second)
	stop("etcd", 15*time.Second)

	if c.Dir != "" {
		find := func() []hostproc.Process {
			ps, _ := hostproc.FindProcesses(watchedPrefixes, []string{c.Dir})
			return ps
		}
		if killed := hostproc.WaitThenKill(find, 5*time.Second, 2*time.Second); len(killed) > 0 {
			errs = append(errs, fmt.Errorf("killed %d process(es) left in %s: %v", len(killed), c.Dir, killed))
		}
		if err := hostproc.UnmountBelow(c.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	if c.settled != nil { // the kubelet was started: undo what it did to the host
		errs = append(errs, removeCgroupRoot(c.CgroupRoot)...)
		restored, serrs := restoreSettings(c.settled)
		errs = append(errs, serrs...)
		if len(restored) > 0 {
			c.logf("kube: sysctls put back: %s", strings.Join(restored, ", "))
		}
		if err := removeLogLinks(c.Dir, c.madeLog); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, c.removeMountPoints()...)
	if left := c.Leftovers(); len(left) > 0 {
		errs = append(errs, fmt.Errorf("left behind: %s", strings.Join(left, "; ")))
	}
	if c.lock != nil {
		c.lock.Close()
	}
	if len(errs) > 0 {
		return fmt.Errorf("kube: close: %w", errors.Join(errs...))
	}
	return nil
}

// removeSandboxes stops and removes, through crictl on the CRI endpoint, every pod
// sandbox the kubelet made (label io.kubernetes.pod.uid) that is still there. A
// containerd no longer running has nothing to remove here: its own cleanup deals with
// what it left.
func (c *Cluster) removeSandboxes(endpoint string) []error {
	if _, err := os.Stat(endpoint); err != nil {
		return nil
	}
	crictl := func(args ...string) (string, error) { return c.crictlAt(endpoint, args...) }
	out, err := crictl("pods", "-o", "json")
	if err != nil {
		return []error{err}
	}
	var pods struct {
		Items []struct {
			ID     string            `json:"id"`
			Labels map[string]string `json:"labels"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &pods); err != nil {
		return []error{fmt.Errorf("crictl pods: %w", err)}
	}
	var errs []error
	for _, p := range pods.Items {
		if p.Labels["io.kubernetes.pod.uid"] == "" {
			continue
		}
		c.logf("kube: removing CRI sandbox %s of pod %s/%s", p.ID, p.Labels["io.kubernetes.pod.namespace"], p.Labels["io.kubernetes.pod.name"])
		if _, err := crictl("stopp", p.ID); err != nil {
			errs = append(errs, err)
		}
		if _, err := crictl("rmp", "-f", p.ID); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// crictlAt runs BinDir's crictl against the CRI endpoint socket (at most 2 minutes) and
// returns its stdout; a non-zero exit is an error with stderr.
func (c *Cluster) crictlAt(endpoint string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ep := "unix://" + endpoint
	full := append([]string{"--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "60s"}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "crictl"), full...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("crictl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Leftovers describes what of the cluster is still on the host, one string each: a
// daemon still running, a process mentioning Dir (etcd, kube-*, shims, runsc), a mount
// below Dir, a cgroup below CgroupRoot, a kernel setting not back at its value before
// the kubelet. After Close it should be empty; Close returns it as an error otherwise.
func (c *Cluster) Leftovers() []string {
	var out []string
	c.mu.Lock()
	for name, d := range c.daemons {
		if !d.Exited() {
			out = append(out, "daemon "+name+" running")
		}
	}
	c.mu.Unlock()
	if c.Dir == "" {
		return out
	}
	ps, err := hostproc.FindProcesses(watchedPrefixes, []string{c.Dir})
	if err != nil {
		out = append(out, err.Error())
	}
	for _, p := range ps {
		out = append(out, "process "+p.String())
	}
	mounts, err := hostproc.MountsBelow(c.Dir)
	if err != nil {
		out = append(out, err.Error())
	}
	for _, m := range mounts {
		out = append(out, "mount "+m)
	}
	out = append(out, c.nodesLeft()...)
	if c.settled != nil {
		for _, cg := range cgroupsLeft(c.CgroupRoot) {
			out = append(out, "cgroup "+cg)
		}
		now, _ := readSettings()
		for _, k := range KernelSettings {
			if now[k] != c.settled[k] {
				out = append(out, fmt.Sprintf("sysctl %s=%s (was %s)", k, now[k], c.settled[k]))
			}
		}
	}
	return out
}
