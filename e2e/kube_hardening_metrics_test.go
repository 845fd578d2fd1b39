package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	goruntime "runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
)

// hardenMetrics checks the metrics and probe endpoints of the shipped manifests on an
// installed one-node cluster (issue 27 item 7), in about 30-60 s (two rollouts of the
// controller):
//   - the agent (hostNetwork) answers /metrics on the node's loopback only: 127.0.0.1:9808
//     in the node's network namespace serves podsnapshot_reports_pending; the node's IP
//     port 9808 refuses connections, from the node and from outside it;
//   - its probes answer at the node's IP port 9809 (where the kubelet probes: the pod is
//     Ready) and not on the loopback;
//   - the controller serves plain /metrics at its pod IP port 9808;
//   - with --metrics-secure added to the controller's args: HTTPS, 401 without a token,
//     403 with a token of a service account without podsnapshot-metrics-reader, 200 and
//     the metrics with one bound to it; the args are put back afterwards.
//
// It leaves the cluster as it found it (namespace harden-metrics and the
// ClusterRoleBinding harden-metrics-reader deleted, the controller's args restored).
func (k *kubeEnv) hardenMetrics() {
	t := k.t
	t.Helper()
	nodeIP := k.node.IP.String()

	// The agent: /metrics on the loopback of the node's network namespace only.
	if code, body, err := k.nodeGet("http://127.0.0.1:9808/metrics", ""); err != nil || code != http.StatusOK || !strings.Contains(body, "podsnapshot_reports_pending") {
		t.Fatalf("agent /metrics at the node's 127.0.0.1:9808: %d %v, body %.200q", code, err, body)
	}
	for _, where := range []struct {
		name string
		get  func(url string) (int, string, error)
	}{
		{"from the node", func(url string) (int, string, error) { return k.nodeGet(url, "") }},
		{"from outside the node", func(url string) (int, string, error) { return hostGet(url, "") }},
	} {
		url := "http://" + net.JoinHostPort(nodeIP, "9808") + "/metrics"
		if code, _, err := where.get(url); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("agent /metrics at the node's IP %s: %d, %v; want the connection refused", where.name, code, err)
		}
	}
	// The agent's probes: the node's IP, where the kubelet probes them; not the loopback.
	if code, body, err := hostGet("http://"+net.JoinHostPort(nodeIP, "9809")+"/healthz", ""); err != nil || code != http.StatusOK || body != "ok" {
		t.Errorf("agent /healthz at %s:9809: %d %q %v, want 200 ok", nodeIP, code, body, err)
	}
	if code, _, err := k.nodeGet("http://127.0.0.1:9809/healthz", ""); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("agent /healthz at the node's 127.0.0.1:9809: %d, %v; want the connection refused", code, err)
	}
	if ready := k.jsonpath("pods", "-n", "podsnapshot-system", "-l", "app.kubernetes.io/name=podsnapshot-agent",
		"-o", `jsonpath={.items[0].status.conditions[?(@.type=="Ready")].status}`); ready != "True" {
		t.Errorf("agent pod Ready = %q, want True (its probes answer)", ready)
	}

	// The controller: plain /metrics at its pod IP.
	if code, body, err := hostGet(k.controllerMetrics(), ""); err != nil || code != http.StatusOK || !strings.Contains(body, "controller_runtime_reconcile_total") {
		t.Fatalf("controller /metrics: %d %v, body %.200q", code, err, body)
	}

	// --metrics-secure on the controller: who may read.
	k.kubectl("create", "namespace", "harden-metrics")
	t.Cleanup(func() {
		k.kube.Kubectl("delete", "clusterrolebinding", "harden-metrics-reader", "--ignore-not-found")
		k.kube.Kubectl("delete", "namespace", "harden-metrics", "--wait=false")
	})
	k.kubectl("-n", "harden-metrics", "create", "serviceaccount", "reader")
	k.kubectl("-n", "harden-metrics", "create", "serviceaccount", "stranger")
	k.kubectl("create", "clusterrolebinding", "harden-metrics-reader", "--clusterrole=podsnapshot-metrics-reader", "--serviceaccount=harden-metrics:reader")
	reader := strings.TrimSpace(k.kubectl("-n", "harden-metrics", "create", "token", "reader"))
	stranger := strings.TrimSpace(k.kubectl("-n", "harden-metrics", "create", "token", "stranger"))

	args := k.jsonpath("-n", "podsnapshot-system", "deployment/podsnapshot-controller", "-o", "jsonpath={.spec.template.spec.containers[0].args}")
	k.kubectl("-n", "podsnapshot-system", "patch", "deployment/podsnapshot-controller", "--type=json",
		"-p", `[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--metrics-secure"}]`)
	t.Cleanup(func() {
		k.kube.Kubectl("-n", "podsnapshot-system", "patch", "deployment/podsnapshot-controller", "--type=json",
			"-p", fmt.Sprintf(`[{"op":"replace","path":"/spec/template/spec/containers/0/args","value":%s}]`, args))
		k.kube.Kubectl("-n", "podsnapshot-system", "rollout", "status", "deployment/podsnapshot-controller", "--timeout=120s")
	})
	k.kubectl("-n", "podsnapshot-system", "rollout", "status", "deployment/podsnapshot-controller", "--timeout=120s")
	var ip string
	harness.Eventually(t, 60*time.Second, "one controller pod after the rollout", func() bool {
		ips := strings.Fields(k.jsonpath("pods", "-n", "podsnapshot-system", "-l", "app.kubernetes.io/name=podsnapshot-controller",
			"-o", `jsonpath={range .items[*]}{.status.podIP}{" "}{end}`))
		if len(ips) == 1 {
			ip = ips[0]
		}
		return len(ips) == 1
	})
	url := "https://" + net.JoinHostPort(ip, "9808") + "/metrics"
	for _, c := range []struct {
		who, token string
		want       int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"a token without the grant", stranger, http.StatusForbidden},
		{"a podsnapshot-metrics-reader token", reader, http.StatusOK},
	} {
		code, body, err := hostGet(url, c.token)
		if err != nil || code != c.want {
			t.Errorf("secure controller /metrics with %s: %d %v, want %d", c.who, code, err, c.want)
		}
		// The reconcilers' metrics appear once the new replica leads (its predecessor's
		// Lease may still run): wait for them.
		for end := time.Now().Add(45 * time.Second); c.want == http.StatusOK && code == c.want && !strings.Contains(body, "controller_runtime_reconcile_total") && time.Now().Before(end); {
			time.Sleep(time.Second)
			code, body, err = hostGet(url, c.token)
		}
		if c.want == http.StatusOK && !strings.Contains(body, "controller_runtime_reconcile_total") {
			t.Errorf("secure controller /metrics with %s: %d %v, body %.200q lacks the reconcilers' metrics", c.who, code, err, body)
		}
	}
	if code, _, err := hostGet("http://"+net.JoinHostPort(ip, "9808")+"/metrics", ""); err == nil && code == http.StatusOK {
		t.Errorf("secure controller /metrics answers plain HTTP with 200")
	}
}

// nodeGet is hostGet from the node's network namespace (its containerd's), where the
// agent, a hostNetwork pod, listens.
func (k *kubeEnv) nodeGet(url, token string) (int, string, error) {
	return get(url, token, func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialInNetNS(ctx, k.node.ContainerdPID(), network, addr)
	})
}

// hostGet GETs url from the test's own network namespace (outside the node) with bearer
// token (none if ""), skipping TLS verification (the endpoints' certificates are
// self-signed), and returns the status and body.
func hostGet(url, token string) (int, string, error) {
	return get(url, token, (&net.Dialer{}).DialContext)
}

func get(url, token string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (int, string, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:     dial,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// dialInNetNS dials addr from the network namespace of process pid: the socket is made
// by a thread that entered it (setns), and stays in it whichever thread uses it later.
// The thread is never unlocked, so it ends with its goroutine instead of going back to
// the scheduler in the other namespace.
func dialInNetNS(ctx context.Context, pid int, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("setns into the network namespace of pid %d: %w", pid, err)}
			return
		}
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
