package shim

import (
	"errors"
	"strings"
	"testing"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
)

func TestDeferredMismatch(t *testing.T) {
	k1, k2 := strings.Repeat("1", 64), strings.Repeat("2", 64)
	d := &deferredRestore{recorded: []manifest.ContainerKey{{Name: "writer", Key: k1}, {Name: "server", Key: k2}}}
	writer := &container{id: "w", name: "writer", key: k1}
	for _, tc := range []struct {
		c    *container
		want string
	}{
		{writer, ""},
		{&container{id: "s", name: "server", key: k1}, "container server differs from the one in the snapshot"},
		{&container{id: "x", name: "sidecar", key: k1}, "container sidecar is not in the snapshot (it has server, writer)"},
		{&container{id: "e", name: "writer", keyErr: errTest}, "container writer cannot be compared with the snapshot: test error"},
	} {
		if got := d.mismatch(tc.c); !strings.Contains(got, tc.want) || (tc.want == "") != (got == "") {
			t.Errorf("mismatch(%s) = %q, want %q", tc.c.name, got, tc.want)
		}
	}
	d.arrived = append(d.arrived, writer)
	if got := d.mismatch(&container{id: "w2", name: "writer", key: k1}); got != "container writer arrived twice" {
		t.Errorf("second writer: %q", got)
	}
}

func TestDeferredPendingIn(t *testing.T) {
	sb := &container{id: "sb", sandbox: true}
	a, b := &container{id: "a"}, &container{id: "b"}
	d := &deferredRestore{arrived: []*container{a}, resolved: make(chan struct{})}
	if !d.pendingIn(sb) || !d.pendingIn(a) || d.pendingIn(b) {
		t.Fatal("waiting: the sandbox and arrived containers are pending, others not")
	}
	d.resolve(deferAbandoned)
	if !d.pendingIn(sb) || d.pendingIn(a) {
		t.Fatal("abandoned: only the never-started sandbox is pending")
	}
	d2 := &deferredRestore{arrived: []*container{a}, resolved: make(chan struct{})}
	d2.resolve(deferRestored)
	if d2.pendingIn(sb) || d2.pendingIn(a) {
		t.Fatal("restored: nothing is pending")
	}
	select {
	case <-d2.resolved:
	default:
		t.Fatal("resolve did not close resolved")
	}
	var none *deferredRestore
	if none.pendingIn(sb) {
		t.Fatal("no deferred restore: nothing is pending")
	}
}

var errTest = errors.New("test error")
