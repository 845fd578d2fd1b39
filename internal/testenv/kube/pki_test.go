package kube

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The credentials chain to the cluster CA with the usages and names each component
// checks: the API server's serving certificate for every address a client uses, client
// certificates with the user and groups Kubernetes authorizes.
func TestCredentials(t *testing.T) {
	c := &Cluster{Dir: t.TempDir(), NodeName: "n1", NodeIP: net.IPv4(192, 0, 2, 7), APIServerURL: "https://127.0.0.1:6443"}
	if err := c.writeCredentials(serviceIP); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.pki.caCert)
	load := func(name string) *x509.Certificate {
		pair, err := tls.LoadX509KeyPair(c.pki.crt(name), c.pki.key(name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		cert, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	server := load("apiserver")
	for _, host := range []string{"127.0.0.1", "192.0.2.7", "10.223.0.1", "kubernetes.default.svc"} {
		if _, err := server.Verify(x509.VerifyOptions{DNSName: host, Roots: roots}); err != nil {
			t.Errorf("apiserver certificate for %s: %v", host, err)
		}
	}
	for name, want := range map[string]string{
		"admin":                    "kubernetes-admin/system:masters",
		"kubelet":                  "system:node:n1/system:nodes",
		"apiserver-kubelet-client": "kube-apiserver-kubelet-client/system:masters",
		"kube-controller-manager":  "system:kube-controller-manager/",
	} {
		cert := load(name)
		if got := cert.Subject.CommonName + "/" + strings.Join(cert.Subject.Organization, ","); got != want {
			t.Errorf("%s: subject %s, want %s", name, got, want)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s as a client certificate: %v", name, err)
		}
	}
	for _, f := range []string{"sa.key", "sa.pub"} {
		if _, err := os.Stat(filepath.Join(c.pki.dir, f)); err != nil {
			t.Error(err)
		}
	}
	b, err := os.ReadFile(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"server: \"https://127.0.0.1:6443\"", c.pki.crt("admin"), c.pki.crt("ca")} {
		if !strings.Contains(string(b), want) {
			t.Errorf("admin kubeconfig lacks %q:\n%s", want, b)
		}
	}
}
