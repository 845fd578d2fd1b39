package nodeinstall

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// HandlerChecker asks containerd's CRI which runtime handlers it serves.
type HandlerChecker interface {
	// Serves reports whether containerd serves the runtime handler named handler. An
	// error means containerd did not answer (down, restarting, CRI not up yet): callers
	// retry it.
	Serves(ctx context.Context, handler string) (bool, error)
}

// CRIChecker asks containerd's CRI RuntimeService.Status over its gRPC socket.
type CRIChecker struct {
	// Socket is where this process reaches containerd's socket (the host path under the
	// host root).
	Socket string
	// Timeout bounds one call; 0 means 5 s.
	Timeout time.Duration
}

// Serves calls Status on a fresh connection each time: a connection kept across a
// containerd restart would wait out gRPC's reconnect backoff (up to 2 minutes) instead of
// seeing the new containerd as soon as it listens. The handler is looked for in
// StatusResponse.RuntimeHandlers (containerd 2.x fills it), else in the verbose Info's
// "config" JSON, under containerd.runtimes.
func (c CRIChecker) Serves(ctx context.Context, handler string) (bool, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+c.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false, fmt.Errorf("containerd socket %s: %w", c.Socket, err)
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	resp, err := rs.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		return false, fmt.Errorf("CRI Status on %s: %w", c.Socket, err)
	}
	if hs := resp.GetRuntimeHandlers(); len(hs) > 0 {
		for _, h := range hs {
			if h.GetName() == handler {
				return true, nil
			}
		}
		return false, nil
	}
	resp, err = rs.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		return false, fmt.Errorf("CRI Status (verbose) on %s: %w", c.Socket, err)
	}
	return configHasRuntime(resp.GetInfo()["config"], handler)
}

// configHasRuntime looks for handler in the JSON of containerd's CRI config, as the
// verbose Status returns it under Info["config"]: {"containerd": {"runtimes": {NAME: ...}}}.
func configHasRuntime(configJSON, handler string) (bool, error) {
	if configJSON == "" {
		return false, fmt.Errorf("CRI Status: no runtime handlers and no verbose config to look for %q in", handler)
	}
	var cfg struct {
		Containerd struct {
			Runtimes map[string]json.RawMessage `json:"runtimes"`
		} `json:"containerd"`
	}
	if err := json.Unmarshal([]byte(configJSON), &cfg); err != nil {
		return false, fmt.Errorf("CRI Status: verbose config: %w", err)
	}
	_, ok := cfg.Containerd.Runtimes[handler]
	return ok, nil
}
