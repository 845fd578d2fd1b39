package main

import (
	"net"

	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// The default addresses of /metrics. The agent runs with hostNetwork (its installer
// needs the node's network namespace), so ":9808" would be a port on every address of
// the node, reachable by every pod of the cluster: it binds to the node's loopback,
// where only the node's own processes (and hostNetwork pods) reach it. The controller has
// a network namespace of its own, so all of its addresses are its pod IP.
const (
	defaultAgentMetrics      = "127.0.0.1:9808"
	defaultControllerMetrics = ":9808"
)

// probePort is the port of /healthz and /readyz. The kubelet probes them at the pod's
// IP, which for the agent (hostNetwork) is the node's: the agent binds them to
// $POD_IP (the DaemonSet sets it from status.podIP), not to every address of the node.
const probePort = "9809"

// metricsOptions are the options of the /metrics endpoint the flags ask for: the bind
// address (--metrics-bind-address, or the role's default) and, with --metrics-secure,
// HTTPS (a self-signed certificate made at start: scrapers skip its verification or
// pin nothing) and controller-runtime's authentication and authorization filter, which
// asks the API server a TokenReview of the caller's bearer token and a
// SubjectAccessReview of get on the non-resource URL /metrics: 401 without a valid
// token, 403 without the grant.
func (f flags) metricsOptions() metricsserver.Options {
	o := metricsserver.Options{BindAddress: f.metricsAddr}
	if o.BindAddress == "" {
		o.BindAddress = defaultAgentMetrics
		if f.role == "controller" {
			o.BindAddress = defaultControllerMetrics
		}
	}
	if f.metricsSecure {
		o.SecureServing = true
		o.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	return o
}

// probeAddress is the address of /healthz and /readyz: --health-probe-bind-address, or
// for the agent $POD_IP (getenv's) port probePort, or :probePort. An IPv6 pod IP is
// bracketed (net.JoinHostPort), which "$(POD_IP):9809" in the manifest would not be.
func (f flags) probeAddress(getenv func(string) string) string {
	if f.probeAddr != "" {
		return f.probeAddr
	}
	if ip := getenv("POD_IP"); ip != "" && f.role == "agent" {
		return net.JoinHostPort(ip, probePort)
	}
	return ":" + probePort
}
