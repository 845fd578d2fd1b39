package stream

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// servedFile is a read-only file the image directory serves: a File arriving, or a
// local file already complete. Ready waits until the n bytes at off can be read from Fd
// and says how many there are (fewer at the end of the file).
type servedFile interface {
	Size() int64
	Ready(ctx context.Context, off int64, n int) (int, error)
	Fd() uintptr
}

// localFile serves a complete local file.
type localFile struct {
	f    *os.File
	size int64
}

func (l localFile) Size() int64 { return l.size }
func (l localFile) Fd() uintptr { return l.f.Fd() }
func (l localFile) Ready(_ context.Context, off int64, n int) (int, error) {
	return int(max(0, min(int64(n), l.size-off))), nil
}

// fileNode is one file of the mount: read-only, its size fixed. A read that fails (a
// frame that failed verification twice) is EIO to runsc, which then stops the sandbox.
type fileNode struct {
	fs.Inode
	// ctx ends with the image. A read waits under it, not under the FUSE request's
	// context: the kernel interrupts a request whenever the reading thread gets a signal,
	// which gVisor's threads get all the time (systrap), and an interrupted read answered
	// with an error would fail the restore.
	ctx  context.Context
	name string
	src  servedFile
	// direct: reads bypass the kernel's page cache of the mount (FOPEN_DIRECT_IO). The
	// pages file is read once, in pieces of 256 KiB by up to 128 threads (gVisor's
	// stateio defaults); caching it would hold a second copy of every page.
	direct bool
	// onReadError is told the first read error.
	onReadError func(name string, err error)
}

var (
	_ fs.NodeGetattrer = (*fileNode)(nil)
	_ fs.NodeOpener    = (*fileNode)(nil)
	_ fs.NodeReader    = (*fileNode)(nil)
)

func (n *fileNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = uint64(n.src.Size())
	out.Blocks = (out.Size + 511) / 512
	return 0
}

func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	if n.direct {
		return nil, fuse.FOPEN_DIRECT_IO, 0
	}
	// The bytes never change: the kernel may keep what it read in its page cache.
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

// Read answers with the bytes spliced from the file behind src (no copy through the
// shim's memory) once they are there.
func (n *fileNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	got, err := n.src.Ready(n.ctx, off, len(dest))
	if err != nil {
		if n.onReadError != nil {
			n.onReadError(n.name, err)
		}
		return nil, syscall.EIO
	}
	return fuse.ReadResultFd(n.src.Fd(), off, got), 0
}

// dirNode is the mount's root: the image files.
type dirNode struct {
	fs.Inode
	files []*fileNode
}

func (d *dirNode) OnAdd(ctx context.Context) {
	for _, f := range d.files {
		ch := d.NewPersistentInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG})
		d.AddChild(f.name, ch, false)
	}
}

// mount serves files read-only at dir (which must exist) until unmount.
type mount struct {
	dir    string
	server *fuse.Server
	once   sync.Once
}

// mountFiles mounts a FUSE file system at dir serving files by name; reads wait under
// ctx. It fails where FUSE
// is not available (no /dev/fuse, no right to mount).
func mountFiles(ctx context.Context, dir string, files map[string]servedFile, onReadError func(string, error)) (*mount, error) {
	root := &dirNode{}
	for name, src := range files {
		_, arriving := src.(*File)
		root.files = append(root.files, &fileNode{ctx: ctx, name: name, src: src, direct: arriving, onReadError: onReadError})
	}
	forever := time.Hour
	// go-fuse (v2.12.1) opens /dev/fuse without O_CLOEXEC and, for a direct mount, never
	// sets it: every process the shim starts afterwards (`runsc wait`, runsc commands)
	// would inherit the device and keep the connection open after the shim died, so that
	// the dead mount hangs whoever touches it (the sandbox, `runsc delete`) instead of
	// failing at once (ENOTCONN). No fork may run until the descriptor is close-on-exec.
	syscall.ForkLock.Lock()
	defer syscall.ForkLock.Unlock()
	defer closeFUSEOnExec()
	server, err := fs.Mount(dir, root, &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:        true, // runsc's sandbox reads through the fd it was given
			FsName:            "podsnapshot",
			Name:              "podsnapshot",
			MaxWrite:          1 << 20, // also max_read: runsc reads pages in pieces of 256 KiB
			MaxReadAhead:      1 << 20,
			DirectMountStrict: true, // the shim runs as root; there is no fusermount
			// Asynchronous requests (readahead of the cached small files) in flight at once.
			// The sandbox's direct reads of pages.img are synchronous: up to its 128.
			MaxBackground: 16,
		},
		EntryTimeout: &forever,
		AttrTimeout:  &forever,
	})
	if err != nil {
		return nil, fmt.Errorf("mount FUSE at %s: %w", dir, err)
	}
	return &mount{dir: dir, server: server}, nil
}

// unmount detaches the mount. A file runsc still holds open keeps being served until it
// is closed (a lazy unmount: the sandbox may still be loading pages).
func (m *mount) unmount() {
	m.once.Do(func() {
		if err := m.server.Unmount(); err != nil {
			if lerr := unix.Unmount(m.dir, unix.MNT_DETACH); lerr != nil && !errors.Is(lerr, unix.EINVAL) {
				return
			}
		}
	})
}

// closeFUSEOnExec makes every /dev/fuse descriptor of the process close-on-exec (see
// mountFiles). Called with syscall.ForkLock held.
func closeFUSEOnExec() {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range fds {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			if fd, err := strconv.Atoi(e.Name()); err == nil {
				syscall.CloseOnExec(fd)
			}
		}
	}
}
