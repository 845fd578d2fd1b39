// Command fsinit imitates a workload whose expensive start leaves its result in the
// container's root file system rather than in memory: the workload of the "rootfs-only"
// snapshot scope. On its first run it writes -mib MiB of files into -dir over -seconds
// seconds and changes files the image carries, then records that in a marker file
// (-dir/.fsinit-done). When it starts and finds the marker, the root file system came back
// from a snapshot: it skips the set-up and checks instead that every file and every change
// came back intact.
//
// The set-up writes the files -dir/file-0 .. -dir/file-7 (-mib MiB in all, the sizes as
// equal as possible) with content derived from the file's index and the offset, so a file
// truncated, zeroed or swapped with another is detected. Then it changes the files that
// the workloads test image carries under /etc/fsinit: it deletes /etc/fsinit/delete-me,
// overwrites /etc/fsinit/modify-me with "modified by fsinit\n", and replaces the directory
// /etc/fsinit/dir (a and b in the image) by one holding only c ("c\n"). The files and the
// marker, written last, are synced to disk. The set-up fails (exit status 1) when the image
// lacks one of those files.
//
// With -checkpoint it then asks gVisor to checkpoint the sandbox by writing "1" to
// /proc/gvisor/checkpoint and prints the result, read from the same open file it wrote
// to (see slowinit); "unavailable" when that file cannot be opened (not under gVisor).
// After that (or straight after "ready" without -checkpoint) it prints "count N" once per
// -interval forever, counting from 0 in memory: a copy restored with its memory continues
// the count, a fresh start on a restored root file system starts again at 0.
//
// Output lines (one per line, stdout, unbuffered):
//
//	first run (no marker):
//	fsinit: writing N MiB over D
//	setup done
//
//	later run (marker present):
//	files ok | files bad: <what>
//	deleted ok | deleted bad: <what>
//	modified ok | modified bad: <what>
//	dir ok | dir bad: <what>
//	setup skipped: found files from a snapshot
//
//	both:
//	ready <RFC 3339 time with nanoseconds>
//	checkpoint result: resume|restore|error|unavailable     (only with -checkpoint)
//	count 0, count 1, ...
//
// The environment variable FSINIT_ROOT, when set, replaces "/" as the prefix of the
// /etc/fsinit paths, so the program can run on a host against a copy of those files.
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/workloads/trigger"
)

const (
	// numFiles is how many files the set-up writes into -dir.
	numFiles = 8
	// markerName is the marker file in -dir: present means the set-up ran before.
	markerName = ".fsinit-done"

	// The files the workloads image carries under /etc/fsinit (relative to root) and
	// what the set-up makes of them.
	deletePath   = "etc/fsinit/delete-me"
	modifyPath   = "etc/fsinit/modify-me"
	dirPath      = "etc/fsinit/dir"
	modifiedData = "modified by fsinit\n"
	newDirFile   = "c"
	newDirData   = "c\n"
)

// root is the prefix of the /etc/fsinit paths: "/" in a container; tests (and
// FSINIT_ROOT) point it at a copy.
var root = "/"

func main() {
	dir := flag.String("dir", "/data", "directory in the root file system for the files (created if missing)")
	mib := flag.Int("mib", 64, "MiB of files to write")
	seconds := flag.Float64("seconds", 2, "seconds to spread the writing over")
	checkpoint := flag.Bool("checkpoint", false, "after ready, trigger a gVisor checkpoint through "+trigger.File)
	interval := flag.Duration("interval", time.Second, "time between two count lines")
	flag.Parse()
	if *mib < 0 || *seconds < 0 || *interval <= 0 || *dir == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "fsinit: -mib and -seconds must not be negative, -interval must be positive, -dir not empty; no arguments")
		os.Exit(2)
	}
	if r := os.Getenv("FSINIT_ROOT"); r != "" {
		root = r
	}

	_, err := os.Lstat(filepath.Join(*dir, markerName))
	switch {
	case err == nil:
		for _, line := range check(*dir, *mib) {
			fmt.Println(line)
		}
		fmt.Println("setup skipped: found files from a snapshot")
	case errors.Is(err, fs.ErrNotExist):
		total := time.Duration(*seconds * float64(time.Second))
		fmt.Printf("fsinit: writing %d MiB over %v\n", *mib, total)
		if err := setup(*dir, *mib, total); err != nil {
			fmt.Fprintf(os.Stderr, "fsinit: %v\n", err)
			os.Exit(1)
		}
		fmt.Println("setup done")
	default:
		fmt.Fprintf(os.Stderr, "fsinit: marker: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("ready %s\n", time.Now().UTC().Format(time.RFC3339Nano))

	if *checkpoint {
		result, err := trigger.Checkpoint()
		switch {
		case errors.Is(err, trigger.ErrUnavailable):
			fmt.Fprintf(os.Stderr, "fsinit: checkpoint: %v\n", err)
			result = "unavailable"
		case err != nil:
			fmt.Fprintf(os.Stderr, "fsinit: checkpoint: %v\n", err)
			result = "error"
		}
		fmt.Printf("checkpoint result: %s\n", result)
	}

	t := time.NewTicker(*interval)
	defer t.Stop()
	for n := 0; ; n++ {
		<-t.C
		fmt.Printf("count %d\n", n)
	}
}

// setup is the first run: it writes the files, changes the image's files and writes the
// marker last, syncing each.
func setup(dir string, mib int, total time.Duration) error {
	for _, p := range []string{deletePath, modifyPath, dirPath} {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			return fmt.Errorf("the image must carry /%s: %w", p, err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := writeFiles(dir, mib, total); err != nil {
		return err
	}
	if err := changeImageFiles(); err != nil {
		return err
	}
	if err := writeSynced(filepath.Join(dir, markerName), fmt.Sprintf("mib %d\n", mib), 0); err != nil {
		return err
	}
	syncDir(dir)
	return nil
}

// fileSizes splits mib MiB into numFiles sizes that differ by at most one byte.
func fileSizes(mib int) [numFiles]int64 {
	total := int64(mib) << 20
	var sizes [numFiles]int64
	for i := range sizes {
		sizes[i] = total / numFiles
		if int64(i) < total%numFiles {
			sizes[i]++
		}
	}
	return sizes
}

func fileName(dir string, i int) string {
	return filepath.Join(dir, fmt.Sprintf("file-%d", i))
}

// word is the 8-byte word at offset off (a multiple of 8) of file i.
func word(i, off uint64) uint64 {
	return (i<<40+off)*0x9E3779B97F4A7C15 ^ 0x46534e4954464c45
}

// content fills buf with the bytes of file i from offset off on: little-endian words of
// word(i, offset), so any offset and length give the same bytes as the whole file.
func content(buf []byte, i int, off int64) {
	for k := range buf {
		o := uint64(off) + uint64(k)
		buf[k] = byte(word(uint64(i), o&^7) >> (8 * (o & 7)))
	}
}

// contentFast is content for an 8-aligned offset, a word at a time; the tail falls back
// to content.
func contentFast(buf []byte, i int, off int64) {
	if off%8 != 0 {
		content(buf, i, off)
		return
	}
	k := 0
	for ; k+8 <= len(buf); k += 8 {
		binary.LittleEndian.PutUint64(buf[k:], word(uint64(i), uint64(off)+uint64(k)))
	}
	content(buf[k:], i, off+int64(k))
}

// chunk is the unit of writing and checking.
const chunk = 1 << 20

// writeFiles writes the numFiles files one chunk at a time and sleeps between chunks so
// the whole writing takes about total.
func writeFiles(dir string, mib int, total time.Duration) error {
	sizes := fileSizes(mib)
	all := int64(mib) << 20
	buf := make([]byte, chunk)
	start := time.Now()
	var written int64
	for i, size := range sizes {
		f, err := os.OpenFile(fileName(dir, i), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		for off := int64(0); off < size; {
			n := min(int64(chunk), size-off)
			contentFast(buf[:n], i, off)
			if _, err := f.Write(buf[:n]); err != nil {
				f.Close()
				return err
			}
			off += n
			written += n
			due := start.Add(time.Duration(float64(total) * float64(written) / float64(all)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("sync %s: %w", f.Name(), err)
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return nil
}

// changeImageFiles makes the changes to the files the image carries.
func changeImageFiles() error {
	if err := os.Remove(filepath.Join(root, deletePath)); err != nil {
		return err
	}
	// Overwrite in place (no O_CREATE): the file must be the image's.
	if err := writeSynced(filepath.Join(root, modifyPath), modifiedData, os.O_TRUNC); err != nil {
		return err
	}
	d := filepath.Join(root, dirPath)
	if err := os.RemoveAll(d); err != nil {
		return err
	}
	if err := os.Mkdir(d, 0o755); err != nil {
		return err
	}
	if err := writeSynced(filepath.Join(d, newDirFile), newDirData, 0); err != nil {
		return err
	}
	syncDir(d)
	syncDir(filepath.Dir(d))
	return nil
}

// writeSynced writes data to path and syncs it. flag 0 creates a new file (it must not
// exist); os.O_TRUNC overwrites an existing one.
func writeSynced(path, data string, flag int) error {
	if flag == 0 {
		flag = os.O_CREATE | os.O_EXCL
	}
	f, err := os.OpenFile(path, os.O_WRONLY|flag, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}

// syncDir syncs a directory's entries, best effort: not every file system supports it.
func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		f.Sync()
		f.Close()
	}
}

// check is the later run: one line per check, "<what> ok" or "<what> bad: <why>".
func check(dir string, mib int) []string {
	line := func(what string, err error) string {
		if err != nil {
			return what + " bad: " + err.Error()
		}
		return what + " ok"
	}
	return []string{
		line("files", checkFiles(dir, mib)),
		line("deleted", checkDeleted()),
		line("modified", checkModified()),
		line("dir", checkDir()),
	}
}

// checkFiles checks the size and content of every file.
func checkFiles(dir string, mib int) error {
	want := make([]byte, chunk)
	got := make([]byte, chunk)
	for i, size := range fileSizes(mib) {
		if err := checkFile(fileName(dir, i), i, size, want, got); err != nil {
			return err
		}
	}
	return nil
}

func checkFile(path string, i int, size int64, want, got []byte) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() != size {
		return fmt.Errorf("%s: size %d, want %d", path, st.Size(), size)
	}
	for off := int64(0); off < size; {
		n := min(int64(chunk), size-off)
		if _, err := io.ReadFull(f, got[:n]); err != nil {
			return fmt.Errorf("%s: read at %d: %w", path, off, err)
		}
		contentFast(want[:n], i, off)
		if !bytes.Equal(got[:n], want[:n]) {
			for k := range n {
				if got[k] != want[k] {
					return fmt.Errorf("%s: wrong content at byte %d", path, off+k)
				}
			}
		}
		off += n
	}
	return nil
}

func checkDeleted() error {
	p := filepath.Join(root, deletePath)
	_, err := os.Lstat(p)
	switch {
	case err == nil:
		return fmt.Errorf("%s exists", p)
	case errors.Is(err, fs.ErrNotExist):
		return nil
	default:
		return err
	}
}

func checkModified() error {
	p := filepath.Join(root, modifyPath)
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	if string(b) != modifiedData {
		return fmt.Errorf("%s holds %q, want %q", p, b, modifiedData)
	}
	return nil
}

func checkDir() error {
	d := filepath.Join(root, dirPath)
	entries, err := os.ReadDir(d)
	if err != nil {
		return err
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{newDirFile}) {
		return fmt.Errorf("%s holds [%s], want [%s]", d, strings.Join(names, " "), newDirFile)
	}
	p := filepath.Join(d, newDirFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	if string(b) != newDirData {
		return fmt.Errorf("%s holds %q, want %q", p, b, newDirData)
	}
	return nil
}
