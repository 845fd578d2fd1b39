package local_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/storage/local"
)

// TestConformanceWithoutOpenat2 is the store suite on the per-element fallback.
func TestConformanceWithoutOpenat2(t *testing.T) {
	defer local.WithoutOpenat2()()
	TestConformance(t)
}

// TestSymlinkEscapes plants symbolic links (and a FIFO) in a store, each pointing out of
// its root, and checks that no operation reads, writes, links or deletes through them:
// with openat2 and with the per-element fallback.
func TestSymlinkEscapes(t *testing.T) {
	t.Run("openat2", testSymlinkEscapes)
	t.Run("fallback", func(t *testing.T) {
		defer local.WithoutOpenat2()()
		testSymlinkEscapes(t)
	})
}

func testSymlinkEscapes(t *testing.T) {
	ctx := context.Background()
	outside := t.TempDir()
	secret := filepath.Join(outside, "ns", "pol", "uuid", "pages.img")
	must(t, os.MkdirAll(filepath.Dir(secret), 0o755))
	must(t, os.WriteFile(secret, []byte("another tenant's memory"), 0o600))

	for _, c := range []struct {
		desc  string
		plant func(t *testing.T, root string) // makes "ns/pol/uuid/pages.img" reach outside
		want  error
	}{
		{"symlinked file", func(t *testing.T, root string) {
			must(t, os.MkdirAll(filepath.Join(root, "ns", "pol", "uuid"), 0o755))
			must(t, os.Symlink(secret, filepath.Join(root, "ns", "pol", "uuid", "pages.img")))
		}, local.ErrSymlink},
		{"symlinked directory in the middle", func(t *testing.T, root string) {
			must(t, os.MkdirAll(filepath.Join(root, "ns"), 0o755))
			must(t, os.Symlink(filepath.Join(outside, "ns", "pol"), filepath.Join(root, "ns", "pol")))
		}, local.ErrSymlink},
		{"symlink at the root's child", func(t *testing.T, root string) {
			must(t, os.Symlink(filepath.Join(outside, "ns"), filepath.Join(root, "ns")))
		}, local.ErrSymlink},
		{"relative symlink", func(t *testing.T, root string) {
			must(t, os.MkdirAll(filepath.Join(root, "ns", "pol"), 0o755))
			rel, _ := filepath.Rel(filepath.Join(root, "ns", "pol"), filepath.Join(outside, "ns", "pol", "uuid"))
			must(t, os.Symlink(rel, filepath.Join(root, "ns", "pol", "uuid")))
		}, local.ErrSymlink},
		{"FIFO", func(t *testing.T, root string) {
			must(t, os.MkdirAll(filepath.Join(root, "ns", "pol", "uuid"), 0o755))
			must(t, syscall.Mkfifo(filepath.Join(root, "ns", "pol", "uuid", "pages.img"), 0o600))
		}, local.ErrNotRegular},
	} {
		t.Run(c.desc, func(t *testing.T) {
			root := t.TempDir()
			st, err := local.New(root)
			must(t, err)
			c.plant(t, root)
			const name = "ns/pol/uuid/pages.img"
			url := st.URL(name)
			check := func(op string, err error) {
				t.Helper()
				if !errors.Is(err, c.want) || !strings.Contains(err.Error(), url) {
					t.Errorf("%s: %v; want %v naming %s", op, err, c.want, url)
				}
			}
			done := make(chan struct{}) // a FIFO must not block an open
			go func() {
				defer close(done)
				r, err := st.Get(ctx, name)
				if err == nil {
					b, _ := io.ReadAll(r)
					r.Close()
					t.Errorf("Get read %q", b)
				}
				check("Get", err)
				_, err = st.GetRange(ctx, name, 0, 5)
				check("GetRange", err)
				_, err = st.Stat(ctx, name)
				check("Stat", err)
				link := filepath.Join(t.TempDir(), "cached")
				check("Link", st.Link(ctx, name, link))
				if _, err := os.Lstat(link); err == nil {
					t.Errorf("Link left %s", link)
				}
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("an operation blocked")
			}
			for _, prefix := range []string{"", "ns/", "ns/pol/", "ns/pol/uuid/"} {
				if infos, err := st.List(ctx, prefix); err != nil || len(infos) != 0 {
					t.Errorf("List(%q) = %v, %v; want nothing", prefix, infos, err)
				}
			}
			if c.desc != "symlinked file" && c.desc != "FIFO" {
				// Writing or deleting through a linked directory is refused.
				_, err := st.Put(ctx, "ns/pol/uuid/new", strings.NewReader("x"))
				checkName(t, "Put", err, st.URL("ns/pol/uuid/new"), c.want)
				_, err = st.PutIfAbsent(ctx, "ns/pol/uuid/new", strings.NewReader("x"))
				checkName(t, "PutIfAbsent", err, st.URL("ns/pol/uuid/new"), c.want)
				check("Delete", st.Delete(ctx, name))
			} else {
				// The planted entry itself is replaced or removed, never written through.
				if _, err := st.Put(ctx, name, strings.NewReader("mine")); err != nil {
					t.Fatalf("Put over the planted entry: %v", err)
				}
				if r, err := st.Get(ctx, name); err != nil {
					t.Errorf("Get after Put: %v", err)
				} else {
					b, _ := io.ReadAll(r)
					r.Close()
					if string(b) != "mine" {
						t.Errorf("Get after Put = %q", b)
					}
				}
				must(t, st.Delete(ctx, name))
			}
			if b, err := os.ReadFile(secret); err != nil || string(b) != "another tenant's memory" {
				t.Fatalf("the file outside the store: %q, %v", b, err)
			}
			if _, err := os.Stat(filepath.Join(outside, "ns", "pol", "uuid", "new")); err == nil {
				t.Fatal("Put wrote outside the store")
			}
		})
	}
}

// TestDeleteRemovesLinkOnly: deleting a name that is a symbolic link removes the link,
// not what it points to.
func TestDeleteRemovesLinkOnly(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	st, _ := local.New(root)
	target := filepath.Join(outside, "keep")
	must(t, os.WriteFile(target, []byte("keep"), 0o600))
	must(t, os.MkdirAll(filepath.Join(root, "ns"), 0o755))
	must(t, os.Symlink(target, filepath.Join(root, "ns", "x")))
	must(t, st.Delete(context.Background(), "ns/x"))
	if _, err := os.Lstat(filepath.Join(root, "ns", "x")); err == nil {
		t.Error("link still there")
	}
	if _, err := os.Stat(target); err != nil {
		t.Errorf("target gone: %v", err)
	}
}

// TestLinkIsRegularFile: the file linked into the cache is the object's inode, a regular
// file, not a symbolic link to the store.
func TestLinkIsRegularFile(t *testing.T) {
	st, _ := local.New(t.TempDir())
	ctx := context.Background()
	if _, err := st.Put(ctx, "ns/a", bytes.NewReader([]byte("data"))); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "a")
	must(t, st.Link(ctx, "ns/a", p))
	li, err := os.Lstat(p)
	oi, _ := os.Stat(filepath.Join(st.Root(), "ns", "a"))
	if err != nil || !li.Mode().IsRegular() || !os.SameFile(li, oi) {
		t.Fatalf("linked file: %v, %v", li, err)
	}
}

func checkName(t *testing.T, op string, err error, url string, want error) {
	t.Helper()
	if !errors.Is(err, want) || !strings.Contains(err.Error(), url) {
		t.Errorf("%s: %v; want %v naming %s", op, err, want, url)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
