package compat

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/podsnapshot/podsnapshot/gpu"
)

const x86CPUInfo = `processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R)
flags		: fpu vme sse2 avx2 avx sse2 aes
bugs		: spectre_v1

processor	: 1
flags		: fpu vme sse2 avx2 avx aes
`

const armCPUInfo = `processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer	: 0x41
`

func TestParseCPUFeatures(t *testing.T) {
	got, err := ParseCPUFeatures(strings.NewReader(x86CPUInfo))
	if want := []string{"aes", "avx", "avx2", "fpu", "sse2", "vme"}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("x86: %v, %v; want %v", got, err, want)
	}
	got, err = ParseCPUFeatures(strings.NewReader(armCPUInfo))
	if err != nil || len(got) != 9 || got[0] != "aes" {
		t.Errorf("arm64: %v, %v", got, err)
	}
	if _, err := ParseCPUFeatures(strings.NewReader("processor : 0\n")); err == nil {
		t.Error("no flags line: no error")
	}
}

func TestLocal(t *testing.T) {
	cpuinfo := filepath.Join(t.TempDir(), "cpuinfo")
	if err := os.WriteFile(cpuinfo, []byte(x86CPUInfo), 0o644); err != nil {
		t.Fatal(err)
	}
	tuple, err := Local(context.Background(), Options{
		RunscVersion: "release-20250512.0",
		RunscFlags:   map[string]string{"platform": "systrap", "network": "sandbox", "debug": "true", "log": "/tmp/x"},
		CPUInfo:      cpuinfo,
		GPU:          gpu.Detector{DevDir: t.TempDir()}, // no GPUs
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Tuple{
		RunscVersion: "release-20250512.0",
		RunscFlags:   map[string]string{"platform": "systrap", "network": "sandbox"},
		Arch:         runtime.GOARCH,
		CPUFeatures:  []string{"aes", "avx", "avx2", "fpu", "sse2", "vme"},
	}
	if !reflect.DeepEqual(tuple, want) {
		t.Errorf("Local = %+v; want %+v", tuple, want)
	}
	if why := Incompatible(tuple, tuple); why != "" {
		t.Errorf("a tuple is incompatible with itself: %s", why)
	}
}

func TestIncompatible(t *testing.T) {
	h200 := gpu.Fingerprint{{Model: "NVIDIA H200", DriverVersion: "570.124.06"}}
	saved := New("release-A", map[string]string{"platform": "systrap", "network": "sandbox"}, "amd64",
		[]string{"sse2", "avx2", "avx512f"}, h200)
	for _, tc := range []struct {
		name   string
		here   Tuple
		reason string
	}{
		{"same", saved, ""},
		{"more CPU features here", New("release-A", saved.RunscFlags, "amd64", []string{"sse2", "avx2", "avx512f", "amx"}, h200), ""},
		{"runsc version", New("release-B", saved.RunscFlags, "amd64", saved.CPUFeatures, h200), "runsc version release-A != release-B"},
		{"platform", New("release-A", map[string]string{"platform": "kvm", "network": "sandbox"}, "amd64", saved.CPUFeatures, h200),
			"runsc flag --platform systrap != kvm"},
		// Unset is runsc's default: network sandbox left unset here is the same configuration.
		{"default left unset here", New("release-A", map[string]string{"platform": "systrap"}, "amd64", saved.CPUFeatures, h200), ""},
		{"default set explicitly here", New("release-A", map[string]string{"platform": "systrap", "network": "sandbox", "overlay2": "root:self", "directfs": ""}, "amd64", saved.CPUFeatures, h200), ""},
		{"other value here than the saved default", New("release-A", map[string]string{"platform": "systrap", "network": "sandbox", "overlay2": "none"}, "amd64", saved.CPUFeatures, h200),
			"runsc flag --overlay2 root:self != none"},
		{"saved value, default here", New("release-A", nil, "amd64", saved.CPUFeatures, h200), ""},
		{"arch", New("release-A", saved.RunscFlags, "arm64", nil, h200), "CPU architecture amd64 != arm64"},
		{"CPU features", New("release-A", saved.RunscFlags, "amd64", []string{"sse2"}, h200), "CPU features missing here: avx2 avx512f"},
		{"no GPU here", New("release-A", saved.RunscFlags, "amd64", saved.CPUFeatures, nil),
			"GPUs 1x NVIDIA H200 (driver 570.124.06) != (none)"},
		{"driver", New("release-A", saved.RunscFlags, "amd64", saved.CPUFeatures, gpu.Fingerprint{{Model: "NVIDIA H200", DriverVersion: "580.1"}}),
			"GPUs 1x NVIDIA H200 (driver 570.124.06) != 1x NVIDIA H200 (driver 580.1)"},
		{"several", New("release-B", map[string]string{"platform": "ptrace", "network": "sandbox"}, "amd64", saved.CPUFeatures, h200),
			"runsc version release-A != release-B; runsc flag --platform systrap != ptrace"},
	} {
		if got := Incompatible(saved, tc.here); got != tc.reason {
			t.Errorf("%s: Incompatible = %q; want %q", tc.name, got, tc.reason)
		}
	}
}
