package hostproc

import (
	"os"
	"testing"
)

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/tmp/a`:          `/tmp/a`,
		`/tmp/a\040b`:     `/tmp/a b`,
		`/tmp/x\011y\134`: "/tmp/x\ty\\",
		`/tmp/z\13`:       `/tmp/z\13`, // too short to decode: kept
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReadProcessSelf(t *testing.T) {
	p, ok := ReadProcess(os.Getpid())
	if !ok || p.PID != os.Getpid() || p.PPID != os.Getppid() || len(p.Cmdline) == 0 {
		t.Fatalf("ReadProcess(self) = %+v, %v", p, ok)
	}
	if !Watched(p, []string{p.Comm}) || Watched(p, []string{"no-such-prefix"}) {
		t.Errorf("Watched(%v) by its own comm / another name wrong", p)
	}
	if q, _ := ReadProcess(os.Getpid()); q.ID() != p.ID() {
		t.Errorf("ID changed: %v then %v", p.ID(), q.ID())
	}
}

func TestMentionsPath(t *testing.T) {
	for _, tc := range []struct {
		line, dir string
		want      bool
	}{
		{"shim -address /tmp/psn-307416/containerd.sock -debug", "/tmp/psn-307416", true},
		{"runsc --root=/tmp/runsc-12/test wait x", "/tmp/runsc-12", true},
		{"fake-gcs-server -filesystem-root /tmp/gcs-1", "/tmp/gcs-1", true},
		{"shim -address /tmp/psn-3074168928/containerd.sock", "/tmp/psn-307416", false},
		{"runsc --root=/tmp/runsc-123/test", "/tmp/runsc-12", false},
		{"a /tmp/x-1 and /tmp/x-12/y", "/tmp/x-12", true},
		{"anything", "", false},
	} {
		if got := mentionsPath(tc.line, tc.dir); got != tc.want {
			t.Errorf("mentionsPath(%q, %q) = %v, want %v", tc.line, tc.dir, got, tc.want)
		}
	}
}
