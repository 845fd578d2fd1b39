package kubeapi

import (
	"context"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	_ "github.com/podsnapshot/podsnapshot/storage/local"
)

func TestSplitStoragePath(t *testing.T) {
	url, ns, pol, uuid, err := SplitStoragePath("gs://bucket/team/a/default/web/0b8f2c7e-6f1a-4d0e-9c2b-1d3e5f7a9b0c")
	if err != nil || url != "gs://bucket/team/a" || ns != "default" || pol != "web" || uuid != "0b8f2c7e-6f1a-4d0e-9c2b-1d3e5f7a9b0c" {
		t.Fatalf("got %q %q %q %q %v", url, ns, pol, uuid, err)
	}
	if _, _, _, _, err := SplitStoragePath("file:///x/y"); err == nil {
		t.Fatal("a path with too few names was accepted")
	}
}

// TestDeleteFilesNeedsTheLocalRoot: a local store whose root this process cannot see is
// an error (the object stays), not "already deleted".
func TestDeleteFilesNeedsTheLocalRoot(t *testing.T) {
	_, err := DeleteFiles(context.Background(), "file:///nonexistent/store/default/web/0b8f2c7e-6f1a-4d0e-9c2b-1d3e5f7a9b0c")
	if err == nil || !strings.Contains(err.Error(), "not reachable") {
		t.Fatalf("err = %v", err)
	}
}

// TestReleaseDeletesOnlyItsOwnSnapshot: a storagePath naming another namespace's or
// another UUID's snapshot deletes nothing; the object is let go.
func TestReleaseDeletesOnlyItsOwnSnapshot(t *testing.T) {
	root := t.TempDir()
	ps := &v1.PodSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant-a", Name: "0b8f2c7e-6f1a-4d0e-9c2b-1d3e5f7a9b0c",
		Finalizers: []string{Finalizer}}, Spec: v1.PodSnapshotSpec{PolicyName: "web"}}
	c := fake.NewClientBuilder().WithScheme(NewScheme()).WithStatusSubresource(&v1.PodSnapshot{}).WithObjects(ps).Build()
	ps.Status.StoragePath = "file://" + root + "/tenant-b/web/0b8f2c7e-6f1a-4d0e-9c2b-1d3e5f7a9b0c"
	var log strings.Builder
	l := logrus.New()
	l.SetOutput(&log)
	if _, err := Release(context.Background(), c, ps, l); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "is not this snapshot's") {
		t.Fatalf("log: %s", log.String())
	}
	if HasFinalizer(ps) {
		t.Fatal("finalizer kept")
	}
}
