package podsnap

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google/externalaccount"

	"github.com/podsnapshot/podsnapshot/checkpoint/policy"
	"github.com/podsnapshot/podsnapshot/internal/config"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
	"github.com/podsnapshot/podsnapshot/storage"
)

// Storage with the pod's own identity (PodSnapshotStorageConfig gcs.tokenSource: podKSA).
// The node agent writes a Kubernetes token of the pod's service account, bound to the pod,
// to <pod_identity.token_dir>/<pod uid> (mode 0600) and refreshes it; the shim never calls
// the API server. The shim exchanges that token at the Security Token Service for a Google
// access token of the workload identity pool's principal for the service account
// (principal://.../subject/system:serviceaccount:<namespace>:<name>), as Workload Identity
// Federation does, with golang.org/x/oauth2/google/externalaccount; every request of the
// pod's store carries that access token. The token is read from the file at each exchange
// (the agent's refresh is picked up) and never logged: errors name the file, not its
// contents.

// tokenWait bounds how long Plan waits for the agent to write a pod's token: kubelet asks
// for the sandbox moments after the pod is bound, when the agent has seen the pod too.
var tokenWait = 5 * time.Second

// storageScope is the OAuth2 scope of the exchanged token: objects read and written.
const storageScope = "https://www.googleapis.com/auth/devstorage.read_write"

// storeOf opens the store of entry's storage config for the pod of spec: with the node's
// credentials, or, for a podKSA config, with the pod's own (podToken). Errors say what is
// missing: the node config's provider, the pod's UID, the agent's token, the exchange.
func (n *Node) storeOf(ctx context.Context, cfg config.Config, entry *policy.Entry, spec *specs.Spec) (storage.Store, error) {
	var opts []storage.Option
	if cfg.GCSEndpoint != "" {
		opts = append(opts, storage.WithEndpoint(cfg.GCSEndpoint))
	}
	if entry.StorageConfig == nil || !entry.StorageConfig.PodIdentity() {
		return n.store(ctx, nodeStoreKey(entry.StoreURL), entry.StoreURL, opts...)
	}
	id := cfg.PodIdentity
	if id.WorkloadIdentityProvider == "" {
		return nil, fmt.Errorf("storage config %s reads with the pod's service account (tokenSource podKSA), and the node config %s sets no pod_identity.workload_identity_provider",
			entry.StorageConfig.Name, cfg.Path)
	}
	uid := spec.Annotations[oci.SandboxUIDAnnotation]
	if !oci.IsPodUID(uid) {
		return nil, fmt.Errorf("storage config %s reads with the pod's service account (tokenSource podKSA), and the sandbox has no pod UID (%s) to find its token by",
			entry.StorageConfig.Name, oci.SandboxUIDAnnotation)
	}
	tok := podToken{path: filepath.Join(cfg.Tokens(), uid)}
	if err := tok.wait(ctx, tokenWait); err != nil {
		return nil, err
	}
	// The token source lives as long as the pod's store (refreshes during an upload), so
	// not on Create's ctx; its requests are bounded by the client's timeout instead of
	// http.DefaultClient's none.
	sctx := context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Timeout: exchangeTimeout})
	ts, err := externalaccount.NewTokenSource(sctx, externalaccount.Config{
		Audience:             id.WorkloadIdentityProvider,
		SubjectTokenType:     "urn:ietf:params:oauth:token-type:jwt",
		TokenURL:             id.STSURL,
		Scopes:               []string{storageScope},
		SubjectTokenSupplier: tok,
	})
	if err != nil {
		return nil, fmt.Errorf("pod identity: %w", err)
	}
	// Exchange now: a refused token is a clear cold-start reason, not a failed lookup.
	if err := firstToken(ctx, ts); err != nil {
		return nil, fmt.Errorf("exchange the pod's service account token (%s) at %s: %w", tok.path, id.STSURL, err)
	}
	return n.store(ctx, entry.StoreURL+"\x00pod "+uid, entry.StoreURL, append(opts, storage.WithTokenSource(ts))...)
}

// exchangeTimeout bounds one request to the Security Token Service.
const exchangeTimeout = 10 * time.Second

// firstToken gets ts's first token, or gives up when ctx ends (oauth2's Token takes no
// context; the request itself ends at exchangeTimeout).
func firstToken(ctx context.Context, ts oauth2.TokenSource) error {
	done := make(chan error, 1)
	go func() {
		_, err := ts.Token()
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// nodeStoreKey is the key of the store at url opened with the node's credentials.
func nodeStoreKey(url string) string { return url + "\x00node" }

// podToken supplies the pod's Kubernetes token from the file the agent writes.
type podToken struct{ path string }

// SubjectToken reads the token (externalaccount.SubjectTokenSupplier).
func (t podToken) SubjectToken(context.Context, externalaccount.SupplierOptions) (string, error) {
	b, err := os.ReadFile(t.path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("no token for the pod at %s: the node agent writes it (podsnapshot-agent running on this node?)", t.path)
	}
	if err != nil {
		return "", fmt.Errorf("read the pod's token: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("the pod's token file %s is empty", t.path)
	}
	return s, nil
}

// wait waits up to d for the token file to exist.
func (t podToken) wait(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		_, err := os.Stat(t.path)
		if err == nil {
			return nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("the pod's token: %w", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no token for the pod's service account at %s after %s: the node agent writes it (podsnapshot-agent running on this node, allowed to create serviceaccounts/token?)", t.path, d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
