package harness

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// GatedDir is a local store's directory served through a FUSE loopback of another
// directory (Backing), which can hold back the reads of one byte range of one file: what
// GCSGate is for fake-gcs-server, for a local store. Everything else passes through to
// the backing files at once; reads bypass the kernel's page cache (direct I/O), so each
// one reaches the gate. The shim sees Dir as any directory: hard links from it into
// another filesystem fail (EXDEV), so the store's objects are copied, never linked.
type GatedDir struct {
	// Dir is the mount point: the local store's path for the shim.
	Dir string
	// Backing holds the files: change them here (truncate, corrupt) and the shim sees it.
	Backing string
	holder
}

// NewGatedDir mounts a gated loopback of a new empty backing directory at dir (created);
// it is unmounted at cleanup, after releasing whatever it holds. It skips the test where
// FUSE cannot be mounted.
func NewGatedDir(t testing.TB, dir, backing string) *GatedDir {
	t.Helper()
	for _, d := range []string{dir, backing} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("harness: %v", err)
		}
	}
	g := &GatedDir{Dir: dir, Backing: backing}
	root, err := fs.NewLoopbackRoot(backing)
	if err != nil {
		t.Fatalf("harness: loopback of %s: %v", backing, err)
	}
	lr := root.(*fs.LoopbackNode)
	gr := &gatedNode{LoopbackNode: lr, g: g}
	lr.RootData.RootNode = gr
	zero := time.Duration(0)
	server, err := fs.Mount(dir, gr, &fs.Options{
		MountOptions: fuse.MountOptions{AllowOther: true, DirectMountStrict: true, FsName: "gated", Name: "gated"},
		// The backing files change under the mount (a test truncates one): no caching of
		// sizes or names.
		EntryTimeout: &zero, AttrTimeout: &zero, NegativeTimeout: &zero,
	})
	if err != nil {
		t.Skipf("harness: FUSE cannot be mounted here: %v", err)
	}
	t.Cleanup(func() {
		g.release()
		if err := server.Unmount(); err != nil {
			_ = unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return g
}

// holding returns the held range a read of n bytes at off of object must wait for, or nil.
func (g *GatedDir) holding(object string, off int64, n int) *heldRange {
	h := g.current()
	if h == nil || h.object != object || off >= h.end || off+int64(n) <= h.off {
		return nil
	}
	return h
}

// gatedNode is a loopback node whose files are opened through the gate.
type gatedNode struct {
	*fs.LoopbackNode
	g *GatedDir
}

var (
	_ fs.NodeWrapChilder = (*gatedNode)(nil)
	_ fs.NodeOpener      = (*gatedNode)(nil)
)

// WrapChild makes every node below the root a gated one.
func (n *gatedNode) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	if ln, ok := ops.(*fs.LoopbackNode); ok {
		return &gatedNode{LoopbackNode: ln, g: n.g}
	}
	return ops
}

// Open opens the backing file, its reads direct and gated.
func (n *gatedNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, _, errno := n.LoopbackNode.Open(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	lf, ok := fh.(*fs.LoopbackFile)
	if !ok {
		return fh, fuse.FOPEN_DIRECT_IO, 0
	}
	return &gatedFile{LoopbackFile: lf, name: n.Path(nil), g: n.g}, fuse.FOPEN_DIRECT_IO, 0
}

// gatedFile is a loopback file whose reads of the held range wait.
type gatedFile struct {
	*fs.LoopbackFile
	name string
	g    *GatedDir
}

func (f *gatedFile) Read(ctx context.Context, buf []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if h := f.g.holding(f.name, off, len(buf)); h != nil {
		select {
		case <-h.open:
		case <-ctx.Done():
			return nil, syscall.EINTR
		}
	}
	return f.LoopbackFile.Read(ctx, buf, off)
}
