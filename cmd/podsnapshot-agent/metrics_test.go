package main

import (
	"flag"
	"io"
	"testing"
)

// The /metrics endpoint from the flags: the agent, which has the node's network, binds
// it to the node's loopback unless told otherwise, the controller to its pod's
// addresses; --metrics-secure serves it over TLS to authenticated and authorized
// callers only (controller-runtime's filters.WithAuthenticationAndAuthorization).
func TestMetricsOptions(t *testing.T) {
	for _, c := range []struct {
		args   []string
		addr   string
		secure bool
	}{
		{[]string{"--role=agent"}, "127.0.0.1:9808", false},
		{[]string{}, "127.0.0.1:9808", false}, // agent is the default role
		{[]string{"--role=controller"}, ":9808", false},
		{[]string{"--role=agent", "--metrics-bind-address=10.1.2.3:9808"}, "10.1.2.3:9808", false},
		{[]string{"--role=agent", "--metrics-bind-address=0"}, "0", false},
		{[]string{"--role=controller", "--metrics-secure"}, ":9808", true},
		{[]string{"--role=agent", "--metrics-bind-address=10.1.2.3:9808", "--metrics-secure"}, "10.1.2.3:9808", true},
	} {
		var f flags
		fs := flag.NewFlagSet("podsnapshot-agent", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f.register(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Errorf("%q: %v", c.args, err)
			continue
		}
		o := f.metricsOptions()
		if o.BindAddress != c.addr {
			t.Errorf("%q: metrics bind address %q, want %q", c.args, o.BindAddress, c.addr)
		}
		if o.SecureServing != c.secure || (o.FilterProvider != nil) != c.secure {
			t.Errorf("%q: SecureServing %v, FilterProvider set %v; want both %v", c.args, o.SecureServing, o.FilterProvider != nil, c.secure)
		}
	}
}

// The probes' address: the agent binds to its pod IP (the node's: the kubelet probes it
// there) when $POD_IP is set; the controller to all of its pod's addresses.
func TestProbeAddress(t *testing.T) {
	env := func(ip string) func(string) string {
		return func(k string) string {
			if k == "POD_IP" {
				return ip
			}
			return ""
		}
	}
	for _, c := range []struct {
		args  []string
		podIP string
		want  string
	}{
		{[]string{"--role=agent"}, "10.0.0.5", "10.0.0.5:9809"},
		{[]string{"--role=agent"}, "fd00::5", "[fd00::5]:9809"},
		{[]string{"--role=agent"}, "", ":9809"},
		{[]string{"--role=controller"}, "10.0.0.5", ":9809"},
		{[]string{"--role=agent", "--health-probe-bind-address=127.0.0.1:7000"}, "10.0.0.5", "127.0.0.1:7000"},
	} {
		var f flags
		fs := flag.NewFlagSet("podsnapshot-agent", flag.ContinueOnError)
		f.register(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		if got := f.probeAddress(env(c.podIP)); got != c.want {
			t.Errorf("%q with POD_IP=%q: probe address %q, want %q", c.args, c.podIP, got, c.want)
		}
	}
}
