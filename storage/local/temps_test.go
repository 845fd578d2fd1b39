package local_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/storage"
	"github.com/podsnapshot/podsnapshot/storage/local"
)

// TestStaleTemps: the temporary file of a Put that died is found once older than the
// cutoff, and deleted with the directories it leaves empty; a young one, a temporary file
// behind a symbolic link, and names that are not temporary are left alone.
func TestStaleTemps(t *testing.T) {
	ctx := context.Background()
	root, outside := t.TempDir(), t.TempDir()
	st, _ := local.New(root)
	old := filepath.Join(root, "ns", "pol", "uuid", storage.TempPrefix+"-pages.img.zst-1")
	young := filepath.Join(root, "ns", "pol", "other", storage.TempPrefix+"-pages.img.zst-2")
	far := filepath.Join(outside, "d", storage.TempPrefix+"-x-3")
	for _, p := range []string{old, young, far} {
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte("half"), 0o600))
	}
	must(t, os.Symlink(filepath.Join(outside, "d"), filepath.Join(root, "ns", "linked")))
	cutoff := time.Now().Add(-time.Hour)
	for _, p := range []string{old, far} {
		must(t, os.Chtimes(p, cutoff.Add(-time.Hour), cutoff.Add(-time.Hour)))
	}
	objs, err := st.StaleTemps(ctx, cutoff)
	if err != nil || len(objs) != 1 || objs[0].Name != "ns/pol/uuid/"+storage.TempPrefix+"-pages.img.zst-1" || objs[0].Size != 4 {
		t.Fatalf("StaleTemps = %v, %v", objs, err)
	}
	for _, bad := range []string{"ns/pol/other/x", "ns/../" + storage.TempPrefix + "-a", storage.TempPrefix} {
		if err := st.DeleteTemp(ctx, bad); err == nil || !strings.Contains(err.Error(), "not a temporary file") {
			t.Errorf("DeleteTemp(%q) = %v", bad, err)
		}
	}
	if err := st.DeleteTemp(ctx, "ns/linked/"+storage.TempPrefix+"-x-3"); err == nil {
		t.Error("DeleteTemp through a symbolic link: no error")
	}
	must(t, st.DeleteTemp(ctx, objs[0].Name))
	if _, err := os.Stat(filepath.Join(root, "ns", "pol", "uuid")); !os.IsNotExist(err) {
		t.Errorf("emptied directory left: %v", err)
	}
	for _, p := range []string{young, far} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}
