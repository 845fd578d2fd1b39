// Package gpu detects NVIDIA GPUs on the node and fingerprints them for snapshot
// compatibility: a snapshot taken with GPU state restores only onto the same GPU models
// with the same driver version. On a node without GPUs everything here is empty and no
// command runs.
package gpu

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// GPU is one device as the fingerprint records it.
type GPU struct {
	// Model is the product name nvidia-smi reports, e.g. "NVIDIA H200".
	Model string `json:"model"`
	// DriverVersion is the kernel driver version, e.g. "570.124.06".
	DriverVersion string `json:"driverVersion"`
}

// Fingerprint is the node's GPUs in nvidia-smi index order; empty without GPUs.
type Fingerprint []GPU

// String is "" for no GPUs, else e.g. "2x NVIDIA H200 (driver 570.124.06)" with one part
// per distinct model and driver, joined by ", ".
func (f Fingerprint) String() string {
	var parts []string
	for i := 0; i < len(f); {
		j := i
		for j < len(f) && f[j] == f[i] {
			j++
		}
		parts = append(parts, fmt.Sprintf("%dx %s (driver %s)", j-i, f[i].Model, f[i].DriverVersion))
		i = j
	}
	return strings.Join(parts, ", ")
}

// Equal reports whether f and g list the same GPUs in the same order.
func (f Fingerprint) Equal(g Fingerprint) bool {
	if len(f) != len(g) {
		return false
	}
	for i := range f {
		if f[i] != g[i] {
			return false
		}
	}
	return true
}

// Info is what Detect found.
type Info struct {
	// DeviceNodes are the per-GPU device files, e.g. ["/dev/nvidia0", "/dev/nvidia1"],
	// sorted. Control nodes such as /dev/nvidiactl and /dev/nvidia-uvm are not listed.
	DeviceNodes []string
	// GPUs is the fingerprint from nvidia-smi; empty when DeviceNodes is empty.
	GPUs Fingerprint
	// CudaCheckpoint is the absolute path of the cuda-checkpoint binary, "" when absent.
	CudaCheckpoint string
}

// Runner runs a command and returns its standard output. The default runs it with
// os/exec; tests inject a fake.
type Runner func(ctx context.Context, name string, args ...string) ([]byte, error)

// Detector finds GPUs. The zero value detects on the real node: /dev, $PATH, os/exec.
type Detector struct {
	// DevDir is where device nodes live; "" means "/dev".
	DevDir string
	// LookPath finds a binary; nil means exec.LookPath.
	LookPath func(file string) (string, error)
	// Run runs nvidia-smi; nil means os/exec.
	Run Runner
}

// Detect runs the zero Detector: see Detector.Detect.
func Detect(ctx context.Context) (Info, error) {
	return Detector{}.Detect(ctx)
}

// deviceNode matches per-GPU nodes: nvidia0, nvidia1, ... (not nvidiactl, nvidia-uvm).
var deviceNode = regexp.MustCompile(`^nvidia[0-9]+$`)

// Detect lists /dev/nvidia<N>; when there are none it returns an empty Info and no error,
// without running anything. Otherwise it runs
// `nvidia-smi --query-gpu=name,driver_version --format=csv,noheader` for the fingerprint
// and looks for cuda-checkpoint in $PATH. It returns an error (with the device nodes it
// found) when GPUs exist but nvidia-smi is missing, fails, prints no GPU, or prints a
// malformed line: a GPU node must never pass for a GPU-less one.
func (d Detector) Detect(ctx context.Context) (Info, error) {
	dev := d.DevDir
	if dev == "" {
		dev = "/dev"
	}
	entries, err := os.ReadDir(dev)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Info{}, nil
		}
		return Info{}, fmt.Errorf("gpu: list device nodes: %w", err)
	}
	var info Info
	for _, e := range entries {
		if deviceNode.MatchString(e.Name()) {
			info.DeviceNodes = append(info.DeviceNodes, filepath.Join(dev, e.Name()))
		}
	}
	if len(info.DeviceNodes) == 0 {
		return Info{}, nil
	}
	sort.Slice(info.DeviceNodes, func(i, j int) bool { return nodeIndex(info.DeviceNodes[i]) < nodeIndex(info.DeviceNodes[j]) })
	info.CudaCheckpoint, _ = FindCudaCheckpoint(d.LookPath)

	smi, err := d.lookPath("nvidia-smi")
	if err != nil {
		return info, fmt.Errorf("gpu: found %s but nvidia-smi is not in PATH: %w", strings.Join(info.DeviceNodes, ", "), err)
	}
	out, err := d.run(ctx, smi, "--query-gpu=name,driver_version", "--format=csv,noheader")
	if err != nil {
		return info, fmt.Errorf("gpu: %s --query-gpu=name,driver_version: %w", smi, err)
	}
	gpus, err := ParseQuery(out)
	if err != nil {
		return info, fmt.Errorf("gpu: %s output: %w", smi, err)
	}
	if len(gpus) == 0 {
		return info, fmt.Errorf("gpu: found %s but nvidia-smi lists no GPU", strings.Join(info.DeviceNodes, ", "))
	}
	info.GPUs = gpus
	return info, nil
}

// nodeIndex orders /dev/nvidia2 before /dev/nvidia10.
func nodeIndex(path string) int {
	n := 0
	for _, c := range strings.TrimPrefix(filepath.Base(path), "nvidia") {
		n = n*10 + int(c-'0')
	}
	return n
}

// ParseQuery parses the output of `nvidia-smi --query-gpu=name,driver_version
// --format=csv,noheader`: one "model, driver" line per GPU. Blank lines are skipped; a line
// without exactly two non-empty fields is an error naming its line number.
func ParseQuery(out []byte) (Fingerprint, error) {
	r := csv.NewReader(bytes.NewReader(out))
	r.TrimLeadingSpace = true
	r.FieldsPerRecord = -1
	var f Fingerprint
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return f, nil
		}
		if err != nil {
			return nil, fmt.Errorf("parse csv: %w", err)
		}
		line, _ := r.FieldPos(0)
		if len(rec) != 2 || strings.TrimSpace(rec[0]) == "" || strings.TrimSpace(rec[1]) == "" {
			return nil, fmt.Errorf("line %d: want \"name, driver_version\", got %q", line, strings.Join(rec, ","))
		}
		f = append(f, GPU{Model: strings.TrimSpace(rec[0]), DriverVersion: strings.TrimSpace(rec[1])})
	}
}

func (d Detector) lookPath(file string) (string, error) {
	if d.LookPath != nil {
		return d.LookPath(file)
	}
	return exec.LookPath(file)
}

func (d Detector) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if d.Run != nil {
		return d.Run(ctx, name, args...)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return nil, fmt.Errorf("%w: %s", err, msg)
		}
		return nil, err
	}
	return out, nil
}
