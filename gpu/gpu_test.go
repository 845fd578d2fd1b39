package gpu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fakeNode is a dev dir with the given nodes, a PATH of the given binaries and a runner
// that answers nvidia-smi with out (or err), counting calls.
type fakeNode struct {
	dev   string
	bins  map[string]bool
	out   string
	err   error
	calls int
}

func newFakeNode(t *testing.T, nodes ...string) *fakeNode {
	dev := t.TempDir()
	for _, n := range nodes {
		if err := os.WriteFile(filepath.Join(dev, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return &fakeNode{dev: dev, bins: map[string]bool{}}
}

func (f *fakeNode) detector() Detector {
	return Detector{
		DevDir: f.dev,
		LookPath: func(file string) (string, error) {
			if f.bins[file] {
				return "/usr/bin/" + file, nil
			}
			return "", exec.ErrNotFound
		},
		Run: func(_ context.Context, name string, args ...string) ([]byte, error) {
			f.calls++
			want := []string{"--query-gpu=name,driver_version", "--format=csv,noheader"}
			if name != "/usr/bin/nvidia-smi" || !reflect.DeepEqual(args, want) {
				return nil, errors.New("unexpected command " + name + " " + strings.Join(args, " "))
			}
			return []byte(f.out), f.err
		},
	}
}

func TestNoGPU(t *testing.T) {
	f := newFakeNode(t, "null", "nvidiactl", "nvidia-uvm") // control nodes alone are no GPU
	f.bins["nvidia-smi"] = true
	info, err := f.detector().Detect(context.Background())
	if err != nil || !reflect.DeepEqual(info, Info{}) || f.calls != 0 {
		t.Fatalf("Detect = %+v, %v after %d calls; want empty, no error, no command", info, err, f.calls)
	}
	if s := info.GPUs.String(); s != "" {
		t.Errorf("empty fingerprint String = %q", s)
	}
	// A missing dev dir is a node without GPUs too.
	info, err = Detector{DevDir: filepath.Join(f.dev, "absent")}.Detect(context.Background())
	if err != nil || len(info.DeviceNodes) != 0 {
		t.Errorf("absent dev dir: %+v, %v", info, err)
	}
}

func TestDetect(t *testing.T) {
	f := newFakeNode(t, "nvidia10", "nvidia2", "nvidia0", "nvidiactl")
	f.bins["nvidia-smi"] = true
	f.bins[CudaCheckpointBinary] = true
	f.out = "NVIDIA H200, 570.124.06\nNVIDIA H200, 570.124.06\n\nNVIDIA L4, 570.124.06\n"
	info, err := f.detector().Detect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	wantNodes := []string{filepath.Join(f.dev, "nvidia0"), filepath.Join(f.dev, "nvidia2"), filepath.Join(f.dev, "nvidia10")}
	if !reflect.DeepEqual(info.DeviceNodes, wantNodes) {
		t.Errorf("DeviceNodes = %v; want %v", info.DeviceNodes, wantNodes)
	}
	h200 := GPU{Model: "NVIDIA H200", DriverVersion: "570.124.06"}
	want := Fingerprint{h200, h200, {Model: "NVIDIA L4", DriverVersion: "570.124.06"}}
	if !reflect.DeepEqual(info.GPUs, want) {
		t.Errorf("GPUs = %+v; want %+v", info.GPUs, want)
	}
	if s := info.GPUs.String(); s != "2x NVIDIA H200 (driver 570.124.06), 1x NVIDIA L4 (driver 570.124.06)" {
		t.Errorf("String = %q", s)
	}
	if info.CudaCheckpoint != "/usr/bin/cuda-checkpoint" {
		t.Errorf("CudaCheckpoint = %q", info.CudaCheckpoint)
	}
}

func TestDetectErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		haveSMI bool
		out     string
		err     error
		want    string
	}{
		{"no nvidia-smi", false, "", nil, "nvidia-smi is not in PATH"},
		{"nvidia-smi fails", true, "", errors.New("exit status 9"), "exit status 9"},
		{"no GPU listed", true, "\n", nil, "nvidia-smi lists no GPU"},
		{"malformed", true, "NVIDIA H200\n", nil, `line 1: want "name, driver_version", got "NVIDIA H200"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeNode(t, "nvidia0")
			f.bins["nvidia-smi"] = tc.haveSMI
			f.out, f.err = tc.out, tc.err
			info, err := f.detector().Detect(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v; want %q", err, tc.want)
			}
			if len(info.DeviceNodes) != 1 || len(info.GPUs) != 0 {
				t.Errorf("info = %+v; want the device node and no fingerprint", info)
			}
		})
	}
}

func TestFingerprintEqual(t *testing.T) {
	a := Fingerprint{{"NVIDIA H200", "570.1"}}
	if !a.Equal(Fingerprint{{"NVIDIA H200", "570.1"}}) || a.Equal(Fingerprint{{"NVIDIA H200", "570.2"}}) || a.Equal(nil) {
		t.Error("Equal is wrong")
	}
	if !Fingerprint(nil).Equal(Fingerprint{}) {
		t.Error("nil and empty fingerprints must be equal")
	}
}

func TestFindCudaCheckpoint(t *testing.T) {
	_, err := FindCudaCheckpoint(func(string) (string, error) { return "", exec.ErrNotFound })
	if !errors.Is(err, exec.ErrNotFound) {
		t.Errorf("error = %v; want exec.ErrNotFound", err)
	}
}

// TestDetectHost runs the real detection; with PODSNAPSHOT_EXPECT_GPU=1 (on a GPU machine)
// it requires a non-empty fingerprint.
func TestDetectHost(t *testing.T) {
	info, err := Detect(context.Background())
	t.Logf("host: nodes=%v gpus=%q cuda-checkpoint=%q err=%v", info.DeviceNodes, info.GPUs.String(), info.CudaCheckpoint, err)
	if os.Getenv("PODSNAPSHOT_EXPECT_GPU") == "1" && (err != nil || len(info.GPUs) == 0) {
		t.Fatalf("expected GPUs: %+v, %v", info, err)
	}
}
