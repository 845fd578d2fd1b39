package storage

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// FollowWriteback hands the bytes another process writes into the regular files of dir
// to the kernel's writeback (sync_file_range SYNC_FILE_RANGE_WRITE, whole MiB) as they
// come, and returns the function that stops it (after one last pass). It is for a
// checkpoint image that a local store is about to adopt (Adopt fsyncs it): gVisor writes
// the image at 300-400 MB/s on CPU, the disk takes it at a multiple of that, so the
// pages are written back while the save runs instead of all in the fsync after it,
// which on the 2-core VM added about 0.6 s at 512 MiB and 2 s at 2 GiB to trigger →
// committed (make bench, the local store's upload part against the same commit of a
// clean image). It looks at the files every followIdle while they do not grow (a
// workload-triggered pod is followed from its start until it saves, which may be
// hours: two stats a second, no inotify instance, of which a host has few) and every
// followEvery while they do. It fails nothing: where sync_file_range is refused
// (another filesystem, another kernel) it stops looking, and the fsync writes the pages
// as before. Files are followed from dir's listing at each pass; a file in dir's
// subdirectories is not.
func FollowWriteback(dir string) (stop func()) {
	w := &follower{dir: dir, files: map[string]*followed{}}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTimer(followIdle)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			next := followIdle
			if w.pass() {
				next = followEvery
			}
			if w.off {
				return
			}
			t.Reset(next)
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(quit)
			<-done
			w.pass()
			w.close()
		})
	}
}

// The follower's pace: every followIdle while the files do not grow, every followEvery
// while they do (gVisor writes them in pieces of a few hundred KiB).
const (
	followIdle  = 500 * time.Millisecond
	followEvery = 20 * time.Millisecond
)

// follower is FollowWriteback's state; only its goroutine, then stop (after the
// goroutine ended), use it.
type follower struct {
	dir   string
	files map[string]*followed
	off   bool // sync_file_range is refused here: nothing more to do
}

// followed is a file of the directory: open for sync_file_range, and how much of it has
// been handed to writeback.
type followed struct {
	f       *os.File
	flushed int64
}

// pass hands each file's whole MiB written since the last pass to writeback and says
// whether any file grew by one.
func (w *follower) pass() (grew bool) {
	if w.off {
		return false
	}
	entries, err := os.ReadDir(w.dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		fl := w.files[e.Name()]
		if fl == nil {
			f, err := os.Open(filepath.Join(w.dir, e.Name()))
			if err != nil {
				continue
			}
			fl = &followed{f: f}
			w.files[e.Name()] = fl
		}
		st, err := fl.f.Stat()
		if err != nil {
			continue
		}
		// A file emptied after a failed save is written again from its start.
		fl.flushed = min(fl.flushed, st.Size())
		end := st.Size() &^ (1<<20 - 1)
		if end <= fl.flushed {
			continue
		}
		grew = true
		err = unix.SyncFileRange(int(fl.f.Fd()), fl.flushed, end-fl.flushed, unix.SYNC_FILE_RANGE_WRITE)
		switch {
		case err == nil:
			fl.flushed = end
		case WritebackUnsupported(err):
			w.off = true
			return grew
		}
		// Any other error (EIO) is the fsync's to report: it sees the same pages.
	}
	return grew
}

func (w *follower) close() {
	for _, fl := range w.files {
		fl.f.Close()
	}
}

// WritebackUnsupported reports whether err, from sync_file_range(2), says the file's
// filesystem (or the descriptor: a pipe) takes no such call: its writers then leave
// every byte to their fsync. Other errors (EIO) concern the pages and are the fsync's to
// report too.
func WritebackUnsupported(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ESPIPE) || errors.Is(err, unix.EOPNOTSUPP)
}
