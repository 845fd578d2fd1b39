package oci

import "testing"

func TestGrouping(t *testing.T) {
	for _, tc := range []struct {
		name        string
		id          string
		annotations map[string]string
		sandbox     bool
		sandboxID   string
	}{
		{"plain ctr container", "c1", nil, true, "c1"},
		{"CRI sandbox", "sb", map[string]string{ContainerTypeAnnotation: "sandbox", SandboxIDAnnotation: "sb"}, true, "sb"},
		{"CRI container", "app", map[string]string{ContainerTypeAnnotation: "container", SandboxIDAnnotation: "sb"}, false, "sb"},
	} {
		if got := IsSandbox(tc.annotations); got != tc.sandbox {
			t.Errorf("%s: IsSandbox = %v", tc.name, got)
		}
		if got := SandboxID(tc.id, tc.annotations); got != tc.sandboxID {
			t.Errorf("%s: SandboxID = %q", tc.name, got)
		}
	}
}

func TestGVisorAnnotations(t *testing.T) {
	got := GVisorAnnotations(map[string]string{"dev.gvisor.spec.mount.x": "1", "io.kubernetes.cri.sandbox-id": "s", "dev.gvisorx": "no"})
	if len(got) != 1 || got["dev.gvisor.spec.mount.x"] != "1" {
		t.Fatalf("GVisorAnnotations = %v", got)
	}
}
