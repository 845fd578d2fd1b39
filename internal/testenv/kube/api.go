package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The harness talks to the API over plain HTTPS with the admin certificate: the few
// calls it needs (readiness, one object, one create) do not warrant client-go in the
// harness's dependency graph. Tests use Kubectl, as a person would.

// requestTimeout bounds one API request of the harness.
const requestTimeout = 10 * time.Second

// client returns an HTTPS client that trusts the cluster CA and presents the admin
// certificate.
func (c *Cluster) client() (*http.Client, error) {
	ca, err := os.ReadFile(c.pki.crt("ca"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(c.pki.crt("admin"), c.pki.key("admin"))
	if err != nil {
		return nil, err
	}
	return &http.Client{
		Timeout: requestTimeout,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
			DisableKeepAlives: true, // the API server restarts under StopAPIServer
		},
	}, nil
}

// do sends one request to the API server and returns the body of a 2xx answer; any
// other status is an error carrying the body (the API's Status message).
func (c *Cluster) do(method, path, body string) ([]byte, error) {
	cl, err := c.client()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequest(method, c.APIServerURL+path, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := cl.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	return b, nil
}

func (c *Cluster) get(path string) ([]byte, error)        { return c.do(http.MethodGet, path, "") }
func (c *Cluster) post(path, body string) ([]byte, error) { return c.do(http.MethodPost, path, body) }

// etcdHealthy returns nil once etcd's /health at the client URL says so.
func etcdHealthy(clientURL string) error {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(clientURL + "/health")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var v struct{ Health string }
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return fmt.Errorf("etcd /health: %w", err)
	}
	if v.Health != "true" {
		return fmt.Errorf("etcd /health: health %q", v.Health)
	}
	return nil
}

// httpOK returns nil once url answers 200 (the kubelet's /healthz).
func httpOK(url string) error {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// KubectlTimeout bounds each Kubectl call.
var KubectlTimeout = 2 * time.Minute

// Kubectl runs `kubectl --kubeconfig Kubeconfig args...` (BinDir's kubectl, at most
// KubectlTimeout) and returns its stdout. A non-zero exit is an error that holds the
// command, the exit status and stderr (kubectl's reason), with stdout still returned.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	return c.KubectlInput("", args...)
}

// KubectlInput is Kubectl with stdin, for `apply -f -` and the like.
func (c *Cluster) KubectlInput(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), KubectlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), ee, strings.TrimSpace(stderr.String()))
		} else {
			err = fmt.Errorf("kubectl %s: %w", strings.Join(args, " "), err)
		}
	}
	return stdout.String(), err
}

// ServiceAccountKubeconfig writes, at path, a kubeconfig that acts as service account
// namespace/name with a token from the TokenRequest API (`kubectl create token`, valid
// for an hour), so that a client started with it has exactly the RBAC granted to that
// account. tokenArgs are more flags of `kubectl create token`, such as
// --bound-object-kind=Pod and --bound-object-name for a token bound to a pod (which then
// names the pod's node, as the token kubelet projects into the pod does).
func (c *Cluster) ServiceAccountKubeconfig(namespace, name, path string, tokenArgs ...string) error {
	token, err := c.Kubectl(append([]string{"-n", namespace, "create", "token", name, "--duration=1h"}, tokenArgs...)...)
	if err != nil {
		return err
	}
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: podsnapshot-e2e
  cluster: {server: %q, certificate-authority: %q}
users:
- name: %s
  user: {token: %q}
contexts:
- name: podsnapshot-e2e
  context: {cluster: podsnapshot-e2e, user: %s}
current-context: podsnapshot-e2e
`, c.APIServerURL, c.pki.crt("ca"), name, strings.TrimSpace(token), name)
	return os.WriteFile(path, []byte(kc), 0o600)
}
