package nodeinstall

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeCRI answers RuntimeService.Status like containerd: with RuntimeHandlers (2.x) or,
// when handlers is nil, without them and with the CRI config in the verbose Info.
type fakeCRI struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	handlers   []string
	configJSON string
}

func (f *fakeCRI) Status(_ context.Context, req *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	resp := &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{}}
	for _, h := range f.handlers {
		resp.RuntimeHandlers = append(resp.RuntimeHandlers, &runtimeapi.RuntimeHandler{Name: h})
	}
	if req.Verbose {
		resp.Info = map[string]string{"config": f.configJSON}
	}
	return resp, nil
}

// serveCRI serves f on a unix socket in a temp dir and returns its path.
func serveCRI(t *testing.T, f *fakeCRI) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "containerd.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return path
}

// TestCRIChecker asks a CRI server over its socket: by RuntimeHandlers, by the verbose
// config when there are none, and fails (to be retried) when nothing listens.
func TestCRIChecker(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		cri  fakeCRI
		want bool
	}{
		{"handlers", fakeCRI{handlers: []string{"", "runc", "podsnapshot"}}, true},
		{"handlers without it", fakeCRI{handlers: []string{"runc"}, configJSON: `{"containerd":{"runtimes":{"podsnapshot":{}}}}`}, false},
		{"verbose config", fakeCRI{configJSON: `{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{},"podsnapshot":{"runtimeType":"io.containerd.podsnapshot.v1"}}}}`}, true},
		{"verbose config without it", fakeCRI{configJSON: `{"containerd":{"runtimes":{"runc":{}}}}`}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CRIChecker{Socket: serveCRI(t, &tc.cri)}.Serves(ctx, "podsnapshot")
			if err != nil || got != tc.want {
				t.Errorf("Serves = %t, %v; want %t", got, err, tc.want)
			}
		})
	}
	missing := filepath.Join(t.TempDir(), "containerd.sock")
	if _, err := (CRIChecker{Socket: missing}).Serves(ctx, "podsnapshot"); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("no server: err = %v, want one naming %s", err, missing)
	}
	if _, err := (CRIChecker{Socket: serveCRI(t, &fakeCRI{})}).Serves(ctx, "podsnapshot"); err == nil {
		t.Error("no handlers and no config: no error")
	}
}
