package kube

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// certLifetime is how long the cluster's certificates are valid: far longer than any
// test, short enough that a forgotten state directory holds nothing lasting.
const certLifetime = 7 * 24 * time.Hour

// pki is the cluster's certificate authority and the files it issued, in one directory.
// Keys are ECDSA P-256: generated in microseconds (RSA 2048 takes a good fraction of a
// second each on a busy 2-core machine), and every component accepts them, including
// ES256 for service-account tokens.
type pki struct {
	dir    string
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
}

// cert and key path of a named credential in the PKI directory: NAME.crt, NAME.key.
func (p *pki) crt(name string) string { return filepath.Join(p.dir, name+".crt") }
func (p *pki) key(name string) string { return filepath.Join(p.dir, name+".key") }

// newPKI creates dir and a fresh CA in it (ca.crt, ca.key).
func newPKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "podsnapshot-e2e-ca"},
		NotBefore:             now.Add(-time.Hour), // tolerate a little clock skew
		NotAfter:              now.Add(certLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	p := &pki{dir: dir, caCert: cert, caKey: key}
	if err := p.write("ca", der, key); err != nil {
		return nil, err
	}
	return p, nil
}

// issue signs a certificate for subject (CN, and O: the groups Kubernetes reads from a
// client certificate) with the given extended usage, and for a server the SANs. It writes
// NAME.crt and NAME.key.
func (p *pki) issue(name, cn string, orgs []string, usage x509.ExtKeyUsage, ips []net.IP, dns []string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: %s key: %w", name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		BasicConstraintsValid: true,
		IPAddresses:           ips,
		DNSNames:              dns,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		return fmt.Errorf("pki: %s certificate: %w", name, err)
	}
	return p.write(name, der, key)
}

// serviceAccountKeys writes sa.key (EC private key, which kube-apiserver signs tokens
// with and kube-controller-manager signs its controllers' tokens with) and sa.pub (its
// public key, which kube-apiserver verifies tokens with).
func (p *pki) serviceAccountKeys() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: service-account key: %w", err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("pki: service-account key: %w", err)
	}
	pb, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("pki: service-account public key: %w", err)
	}
	if err := writePEM(p.key("sa"), "EC PRIVATE KEY", kb, 0o600); err != nil {
		return err
	}
	return writePEM(filepath.Join(p.dir, "sa.pub"), "PUBLIC KEY", pb, 0o644)
}

func (p *pki) write(name string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("pki: %s key: %w", name, err)
	}
	if err := writePEM(p.crt(name), "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	return writePEM(p.key(name), "EC PRIVATE KEY", kb, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

// serial is a random 64-bit certificate serial number.
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// writeCredentials issues every certificate the cluster uses and writes the kubeconfig
// files, for an API server at 127.0.0.1:apiPort:
//
//   - apiserver: serving certificate for 127.0.0.1, the node IP, the first service IP
//     (the in-cluster `kubernetes` Service) and the kubernetes.default.svc names;
//   - admin (O=system:masters): Cluster.Kubeconfig, what tests and Close use;
//   - kubelet (CN=system:node:NODE, O=system:nodes): the Node authorizer and the
//     NodeRestriction admission plugin recognise the kubelet by it;
//   - apiserver-kubelet-client (O=system:masters): the API server's client certificate
//     at the kubelet (logs, exec), which authorizes it through a webhook;
//   - kube-controller-manager (CN=system:kube-controller-manager): its RBAC role;
//   - with Options.Nodes: kubelet-NODE for each node, kube-scheduler
//     (CN=system:kube-scheduler) and kube-proxy (CN=system:kube-proxy, bound to
//     system:node-proxier by default), and the bridge address in the serving certificate;
//   - sa.key, sa.pub: the service-account token key pair.
func (c *Cluster) writeCredentials(serviceIP net.IP) error {
	p, err := newPKI(filepath.Join(c.Dir, "pki"))
	if err != nil {
		return err
	}
	c.pki = p
	c.Kubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	serverIPs := []net.IP{net.IPv4(127, 0, 0, 1), c.NodeIP, serviceIP}
	if c.BridgeIP != nil {
		serverIPs = append(serverIPs, c.BridgeIP)
	}
	serverDNS := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local"}
	steps := []error{
		p.issue("apiserver", "kube-apiserver", nil, x509.ExtKeyUsageServerAuth, serverIPs, serverDNS),
		p.issue("admin", "kubernetes-admin", []string{"system:masters"}, x509.ExtKeyUsageClientAuth, nil, nil),
		p.issue("kubelet", "system:node:"+c.NodeName, []string{"system:nodes"}, x509.ExtKeyUsageClientAuth, nil, nil),
		p.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, x509.ExtKeyUsageClientAuth, nil, nil),
		p.issue("kube-controller-manager", "system:kube-controller-manager", nil, x509.ExtKeyUsageClientAuth, nil, nil),
		p.serviceAccountKeys(),
	}
	users := map[string]string{
		c.Kubeconfig:                            "admin",
		c.kubeconfig("kubelet"):                 "kubelet",
		c.kubeconfig("kube-controller-manager"): "kube-controller-manager",
	}
	if len(c.Nodes) > 0 {
		steps = append(steps,
			p.issue("kube-scheduler", "system:kube-scheduler", nil, x509.ExtKeyUsageClientAuth, nil, nil),
			p.issue("kube-proxy", "system:kube-proxy", nil, x509.ExtKeyUsageClientAuth, nil, nil))
		users[c.kubeconfig("kube-scheduler")] = "kube-scheduler"
		users[c.kubeconfig("kube-proxy")] = "kube-proxy"
		for _, n := range c.Nodes {
			steps = append(steps, p.issue("kubelet-"+n.Name, "system:node:"+n.Name, []string{"system:nodes"}, x509.ExtKeyUsageClientAuth, nil, nil))
			users[c.kubeconfig("kubelet-"+n.Name)] = "kubelet-" + n.Name
		}
	}
	for _, err := range steps {
		if err != nil {
			return err
		}
	}
	for path, user := range users {
		if err := os.WriteFile(path, []byte(c.kubeconfigYAML(user)), 0o600); err != nil {
			return fmt.Errorf("kubeconfig: %w", err)
		}
	}
	return nil
}

// kubeconfig is the path of a component's kubeconfig file.
func (c *Cluster) kubeconfig(component string) string {
	return filepath.Join(c.Dir, component+".kubeconfig")
}

// kubeconfigYAML is a kubeconfig for the API server with the client certificate of user
// (a name in the PKI directory), by file path: the state directory stays the one place
// that holds the cluster's secrets.
func (c *Cluster) kubeconfigYAML(user string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: podsnapshot-e2e
  cluster:
    server: %q
    certificate-authority: %q
users:
- name: %s
  user:
    client-certificate: %q
    client-key: %q
contexts:
- name: podsnapshot-e2e
  context:
    cluster: podsnapshot-e2e
    user: %s
current-context: podsnapshot-e2e
`, c.APIServerURL, c.pki.crt("ca"), user, c.pki.crt(user), c.pki.key(user), user)
}
