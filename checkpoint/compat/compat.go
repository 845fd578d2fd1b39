// Package compat describes the node a snapshot was taken on, as far as restoring depends on
// it, and says in words why a snapshot cannot restore here.
package compat

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"

	"github.com/podsnapshot/podsnapshot/gpu"
)

// Tuple is the compatibility tuple stored in a manifest and compared before restore.
type Tuple struct {
	// RunscVersion is `runsc --version`'s version, e.g. "release-20250512.0".
	RunscVersion string `json:"runscVersion"`
	// RunscFlags are the runsc flags among StateFlags that were set (flag name without
	// dashes -> value), e.g. {"platform": "systrap", "network": "sandbox"}.
	RunscFlags map[string]string `json:"runscFlags,omitempty"`
	// Arch is the Go architecture name, e.g. "amd64", "arm64".
	Arch string `json:"arch"`
	// CPUFeatures are the CPU's feature flags (/proc/cpuinfo "flags" on x86, "Features" on
	// arm64), sorted, without duplicates.
	CPUFeatures []string `json:"cpuFeatures,omitempty"`
	// GPUs is the GPU fingerprint; empty on a node without GPUs.
	GPUs gpu.Fingerprint `json:"gpus,omitempty"`
}

// StateFlags are the runsc flags that shape saved state: a snapshot restores only under the
// same values. Other flags (logging, debug, paths) do not matter.
var StateFlags = []string{
	"platform",           // systrap, ptrace, kvm: saved register and memory layout
	"network",            // sandbox, host, none: the netstack is saved only with sandbox
	"overlay2",           // rootfs overlay medium: the upper layer is part of the state
	"overlay",            // legacy spelling of overlay2
	"nvproxy",            // GPU proxy state
	"nvproxy-docker",     // legacy nvproxy switch
	"tpuproxy",           // TPU proxy state
	"file-access",        // exclusive/shared: gofer caching saved in the dentry tree
	"file-access-mounts", // the same for bind mounts
	"directfs",           // how file descriptors to the host are held
	"host-uds",           // host Unix sockets reachable from the sandbox
	"host-fifo",          // host FIFOs reachable from the sandbox
}

// Options are the inputs of Local that come from elsewhere.
type Options struct {
	// RunscVersion is the installed runsc's version.
	RunscVersion string
	// RunscFlags are the runsc flags in effect (any flags; only StateFlags are kept).
	RunscFlags map[string]string
	// CPUInfo is the cpuinfo file; "" means /proc/cpuinfo.
	CPUInfo string
	// GPU detects GPUs; the zero value looks at the real node.
	GPU gpu.Detector
}

// Local returns this node's tuple. It fails when cpuinfo cannot be read or when GPU
// detection fails on a node that has GPUs (a GPU node must not pass for a GPU-less one).
func Local(ctx context.Context, o Options) (Tuple, error) {
	path := o.CPUInfo
	if path == "" {
		path = "/proc/cpuinfo"
	}
	f, err := os.Open(path)
	if err != nil {
		return Tuple{}, fmt.Errorf("compat: %w", err)
	}
	defer f.Close()
	features, err := ParseCPUFeatures(f)
	if err != nil {
		return Tuple{}, fmt.Errorf("compat: %s: %w", path, err)
	}
	info, err := o.GPU.Detect(ctx)
	if err != nil {
		return Tuple{}, fmt.Errorf("compat: %w", err)
	}
	return New(o.RunscVersion, o.RunscFlags, runtime.GOARCH, features, info.GPUs), nil
}

// New builds a tuple, keeping only StateFlags of flags and sorting features.
func New(runscVersion string, flags map[string]string, arch string, features []string, gpus gpu.Fingerprint) Tuple {
	t := Tuple{RunscVersion: runscVersion, Arch: arch, GPUs: gpus}
	for _, k := range StateFlags {
		if v, ok := flags[k]; ok {
			if t.RunscFlags == nil {
				t.RunscFlags = map[string]string{}
			}
			t.RunscFlags[k] = v
		}
	}
	t.CPUFeatures = sortedUnique(features)
	return t
}

// ParseCPUFeatures reads the first processor's "flags" (x86) or "Features" (arm64) line of
// a /proc/cpuinfo text and returns its words sorted. Nodes have homogeneous CPUs, so the
// first processor speaks for all. No such line is an error.
func ParseCPUFeatures(r io.Reader) ([]string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		if k := strings.TrimSpace(key); k == "flags" || k == "Features" {
			return sortedUnique(strings.Fields(value)), nil
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("no \"flags\" or \"Features\" line")
}

func sortedUnique(in []string) []string {
	if len(in) == 0 {
		return nil
	}
	out := append([]string(nil), in...)
	sort.Strings(out)
	n := 1
	for _, s := range out[1:] {
		if s != out[n-1] {
			out[n] = s
			n++
		}
	}
	return out[:n]
}
