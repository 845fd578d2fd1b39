package gcs_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/storage"
	gcsstore "github.com/podsnapshot/podsnapshot/storage/gcs"
)

// TestStaleTemps: the parts an upload leaves when its store dies mid-upload (written here
// as such an upload leaves them) are found once older than the cutoff and deleted; an
// upload with a part younger than the cutoff may be running and is left whole.
func TestStaleTemps(t *testing.T) {
	ctx := context.Background()
	st := backend{}.New(t)
	gs := st.(*gcsstore.Store)
	write := func(name string) {
		t.Helper()
		w := client.Bucket(bucket).Object(key(st, name)).NewWriter(ctx)
		w.Write([]byte("part of " + name))
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	tmp := storage.TempPrefix + "/"
	for _, n := range []string{"dead/p00000", "dead/p00001", "dead/c1-00000", "running/p00000"} {
		write(tmp + n)
	}
	if _, err := st.Put(ctx, "ns/pol/snap/file", strings.NewReader("object")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	cutoff := time.Now()
	time.Sleep(50 * time.Millisecond)
	write(tmp + "running/p00001")

	if objs, err := gs.StaleTemps(ctx, cutoff.Add(-time.Hour)); err != nil || len(objs) != 0 {
		t.Fatalf("StaleTemps before any was written = %v, %v; want none", objs, err)
	}
	objs, err := gs.StaleTemps(ctx, cutoff)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range objs {
		names = append(names, o.Name)
		if o.Size == 0 || o.Updated.IsZero() || !o.Updated.Before(cutoff) {
			t.Errorf("%s: size %d, updated %v", o.Name, o.Size, o.Updated)
		}
	}
	want := tmp + "dead/c1-00000 " + tmp + "dead/p00000 " + tmp + "dead/p00001"
	if strings.Join(names, " ") != want {
		t.Fatalf("StaleTemps = %v, want %s", names, want)
	}
	for _, n := range names {
		if err := gs.DeleteTemp(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range []string{"ns/pol/snap/file", storage.TempPrefix, tmp, storage.TempPrefix + "-x/y"} {
		if err := gs.DeleteTemp(ctx, bad); err == nil || !strings.Contains(err.Error(), "not a temporary object") {
			t.Errorf("DeleteTemp(%q) = %v", bad, err)
		}
	}
	got := strings.Join((backend{}).RawNames(t, st), " ")
	if want := tmp + "running/p00000 " + tmp + "running/p00001 ns/pol/snap/file"; got != want {
		t.Errorf("left: %s, want %s", got, want)
	}
	// Once the running upload is old too, all of it goes.
	if objs, _ := gs.StaleTemps(ctx, time.Now().Add(time.Minute)); len(objs) != 2 {
		t.Errorf("StaleTemps(later) = %v, want running's two parts", objs)
	}
}
