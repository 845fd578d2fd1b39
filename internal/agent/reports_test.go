package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/internal/report"
)

// terminating is what the API server answers to a create in a namespace being deleted:
// 403 with cause NamespaceTerminating.
func terminating(ns string) error {
	err := apierrors.NewForbidden(schema.GroupResource{Resource: "events"}, "x",
		errors.New("unable to create new content in namespace "+ns+" because it is being terminated"))
	err.ErrStatus.Details.Causes = []metav1.StatusCause{{Type: corev1.NamespaceTerminatingCause,
		Message: "namespace " + ns + " is being terminated", Field: "metadata.namespace"}}
	return err
}

// refusingClient refuses every create in namespace ns with refuse(ns).
func refusingClient(base client.WithWatch, ns string, refuse func(string) error) client.WithWatch {
	return interceptor.NewClient(base, interceptor.Funcs{
		Create: func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if obj.GetNamespace() == ns {
				return refuse(ns)
			}
			return cl.Create(ctx, obj, opts...)
		},
	})
}

// inNS is a report of kind about pod ns/name, at written + i ms (so that the spool keeps
// the order given).
func inNS(kind report.Kind, ns, name string, at time.Time, i int) report.Report {
	r := rep(kind, name, "uid-"+ns+"-"+name)
	r.Pod.Namespace = ns
	r.Time = at.Add(time.Duration(i) * time.Millisecond)
	return r
}

func setAside(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	must(t, err)
	var out []string
	for _, de := range des {
		if strings.HasPrefix(de.Name(), ".refused-") || strings.HasPrefix(de.Name(), ".bad-") {
			out = append(out, de.Name())
		}
	}
	return out
}

// TestTerminatingNamespaceSetAsideAtOnce: reports of a namespace being deleted are
// refused with cause NamespaceTerminating; they are set aside in the first round, and
// another namespace's CheckpointCommitted behind them is delivered in that same round.
func TestTerminatingNamespaceSetAsideAtOnce(t *testing.T) {
	ctx := context.Background()
	base := newFake(pod("counter", "u1"))
	r, sp := newReporter(t, refusingClient(base, "gone", terminating))
	at := time.Now()
	for i := 0; i < 3; i++ {
		must(t, sp.Write(inNS(report.CheckpointStarted, "gone", "x", at, i)))
	}
	commit := rep(report.CheckpointCommitted, "counter", "u1")
	commit.Time = at.Add(10 * time.Millisecond)
	must(t, sp.Write(commit))
	r.drain(ctx)
	if left, _, _ := sp.List(); len(left) != 0 {
		t.Errorf("%d reports left in the spool after one round, want 0 (the terminating namespace's set aside at once)", len(left))
	}
	if got := setAside(t, sp.Dir); len(got) != 3 {
		t.Errorf("set aside %q, want the 3 reports of the terminating namespace", got)
	}
	var ps v1.PodSnapshot
	if err := base.Get(ctx, client.ObjectKey{Namespace: "default", Name: uuid}, &ps); err != nil || readyReason(&ps) != v1.ReasonAllSnapshotsAvailable {
		t.Fatalf("the other namespace's CheckpointCommitted was not delivered in the same round: %v, Ready reason %q", err, readyReason(&ps))
	}
}

// TestNamespaceGoneSetAsideAtOnce: a create in a namespace that no longer exists is a
// NotFound of the namespace: set aside at once too.
func TestNamespaceGoneSetAsideAtOnce(t *testing.T) {
	base := newFake()
	r, sp := newReporter(t, refusingClient(base, "gone", func(ns string) error {
		return apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, ns)
	}))
	must(t, sp.Write(inNS(report.CheckpointStarted, "gone", "x", time.Now(), 0)))
	r.drain(context.Background())
	if got := setAside(t, sp.Dir); len(got) != 1 {
		t.Fatalf("set aside %q after one round, want the report of the deleted namespace", got)
	}
}

// TestFailingNamespaceHoldsOnlyItself: a namespace whose reports fail (a webhook that
// errs; a 403 within refuseWindow) keeps its reports in order, the later one waiting
// behind the failing one, while another namespace's reports are delivered in the same
// round.
func TestFailingNamespaceHoldsOnlyItself(t *testing.T) {
	for name, refuse := range map[string]func(string) error{
		"webhook": func(string) error { return apierrors.NewInternalError(errors.New("failed calling webhook")) },
		"403": func(ns string) error {
			return apierrors.NewForbidden(schema.GroupResource{Resource: "events"}, "x", errors.New("RBAC: not yet"))
		},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			base := newFake(pod("counter", "u1"))
			failing := true
			r, sp := newReporter(t, interceptor.NewClient(base, interceptor.Funcs{
				Create: func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
					// The first report's PodSnapshot is refused; the second (an event only)
					// would pass, but must wait behind it.
					if _, ok := obj.(*v1.PodSnapshot); ok && obj.GetNamespace() == "slow" && failing {
						return refuse("slow")
					}
					return cl.Create(ctx, obj, opts...)
				},
			}))
			at := time.Now()
			must(t, sp.Write(inNS(report.CheckpointStarted, "slow", "x", at, 0)))
			cold := inNS(report.ColdStart, "slow", "y", at, 1)
			cold.Reason = report.ReasonNoSnapshot
			must(t, sp.Write(cold))
			commit := rep(report.CheckpointCommitted, "counter", "u1")
			commit.Time = at.Add(10 * time.Millisecond)
			must(t, sp.Write(commit))
			r.drain(ctx)
			if readyReason(getSnap(t, base)) != v1.ReasonAllSnapshotsAvailable {
				t.Fatal("the other namespace's CheckpointCommitted was not delivered in the same round")
			}
			left, _, _ := sp.List()
			if len(left) != 2 || left[0].Report.Pod.Namespace != "slow" || left[1].Report.Pod.Namespace != "slow" {
				t.Fatalf("spool after the round = %+v, want both reports of namespace slow", left)
			}
			var evs corev1.EventList
			must(t, base.List(ctx, &evs, client.InNamespace("slow")))
			if len(evs.Items) != 0 {
				t.Fatalf("namespace slow's later report delivered before its failing first one: %+v", evs.Items)
			}
			if got := setAside(t, sp.Dir); len(got) != 0 {
				t.Fatalf("set aside %q, want none (retried)", got)
			}
			failing = false
			r.drain(ctx)
			if left, _, _ := sp.List(); len(left) != 0 {
				t.Fatalf("%d reports left once namespace slow accepts them", len(left))
			}
		})
	}
}

// TestSetAsideReportsPruned: set-aside reports older than setAsideMaxAge are removed;
// newer ones and the spool's reports are kept.
func TestSetAsideReportsPruned(t *testing.T) {
	r, sp := newReporter(t, newFake())
	must(t, sp.Write(rep(report.ColdStart, "", "")))
	old := filepath.Join(sp.Dir, ".refused-00000000000000000001-aaaaaaaa.json")
	oldBad := filepath.Join(sp.Dir, ".bad-00000000000000000002-bbbbbbbb.json")
	recent := filepath.Join(sp.Dir, ".refused-00000000000000000003-cccccccc.json")
	for _, p := range []string{old, oldBad, recent} {
		must(t, os.WriteFile(p, []byte("{}"), 0o600))
	}
	long := time.Now().Add(-8 * 24 * time.Hour)
	must(t, os.Chtimes(old, long, long))
	must(t, os.Chtimes(oldBad, long, long))
	// A report with no pod name: delivered with nothing to do; the spool empties.
	r.drain(context.Background())
	got := setAside(t, sp.Dir)
	if len(got) != 1 || got[0] != filepath.Base(recent) {
		t.Fatalf("set-aside files after a round = %q, want only %s (the others are older than 7 days)", got, filepath.Base(recent))
	}
}
