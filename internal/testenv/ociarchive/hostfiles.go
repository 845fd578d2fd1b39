package ociarchive

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// HostBundle names host files to copy into an image together with everything they need
// to run: dynamically linked programs from Debian packages, with their shared-library
// closure, and the data directories they read (python3's standard library).
type HostBundle struct {
	// Programs are host executables (absolute paths). Each is copied to the same path in
	// the image; a symbolic link is kept as a link and its target is copied too.
	Programs []string
	// Dirs are host directories copied recursively to the same path.
	Dirs []HostDir
}

// HostDir is a host directory to copy.
type HostDir struct {
	// Path is the absolute host path, copied to the same path in the image.
	Path string
	// Exclude lists paths relative to Path (such as "config-3.11-x86_64-linux-gnu") that
	// are left out with everything below them.
	Exclude []string
}

// HostFiles returns the image files of b: each program, each directory, and the
// shared-library closure of every ELF file among them, as `ldd` reports it, plus the ELF
// interpreter (loader) each names. Libraries land at the path ldd prints (e.g.
// /lib/x86_64-linux-gnu/libc.so.6), which the loader searches by default, so the image
// needs no ld.so.cache. Symbolic links are kept; content and permission bits come from
// the host, times are the archive's fixed Epoch.
//
// Timestamp-based .pyc files whose recorded source time matches their source on the
// host are rewritten to record Epoch instead, so they stay valid in the image (where
// every file has time Epoch) and python3 does not recompile its standard library on
// every start.
func HostFiles(b HostBundle) ([]File, error) {
	c := &collector{files: map[string]File{}, seenELF: map[string]bool{}}
	for _, p := range b.Programs {
		if !path.IsAbs(p) {
			return nil, fmt.Errorf("program %q: path must be absolute", p)
		}
		if err := c.addPath(p, true); err != nil {
			return nil, err
		}
	}
	for _, d := range b.Dirs {
		if err := c.addDir(d); err != nil {
			return nil, err
		}
	}
	// Libraries of libraries are in ldd's output already (it prints the whole closure),
	// but libraries only found in data directories are processed as they come.
	for len(c.pendingELF) > 0 {
		p := c.pendingELF[0]
		c.pendingELF = c.pendingELF[1:]
		if err := c.addClosure(p); err != nil {
			return nil, err
		}
	}
	paths := make([]string, 0, len(c.files))
	for p := range c.files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	out := make([]File, 0, len(paths))
	for _, p := range paths {
		out = append(out, c.files[p])
	}
	return out, nil
}

type collector struct {
	files      map[string]File
	seenELF    map[string]bool
	pendingELF []string
}

// addPath adds the host file p at the same path; links are followed (and kept) until a
// regular file, which is queued for its library closure when it is ELF and elf is set.
func (c *collector) addPath(p string, elfCheck bool) error {
	for range 40 {
		p = path.Clean(p)
		if _, ok := c.files[p]; ok {
			return nil
		}
		st, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("host file %s: %w", p, err)
		}
		switch {
		case st.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("host file %s: %w", p, err)
			}
			c.files[p] = File{Path: p, Mode: fs.ModeSymlink, Target: target}
			if !path.IsAbs(target) {
				target = path.Join(path.Dir(p), target)
			}
			p = target
		case st.Mode().IsRegular():
			c.files[p] = File{Path: p, Mode: st.Mode().Perm(), Source: p}
			if elfCheck && isELF(p) {
				c.pendingELF = append(c.pendingELF, p)
			}
			return nil
		default:
			return fmt.Errorf("host file %s: not a regular file or link (%v)", p, st.Mode())
		}
	}
	return fmt.Errorf("host file %s: too many levels of symbolic links", p)
}

func (c *collector) addDir(d HostDir) error {
	root := path.Clean(d.Path)
	if !path.IsAbs(root) {
		return fmt.Errorf("directory %q: path must be absolute", d.Path)
	}
	excluded := map[string]bool{}
	for _, e := range d.Exclude {
		excluded[path.Join(root, e)] = true
	}
	return filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("directory %s: %w", root, err)
		}
		if excluded[p] {
			if de.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := de.Info()
		if err != nil {
			return fmt.Errorf("directory %s: %w", root, err)
		}
		switch {
		case de.IsDir():
			c.files[p] = File{Path: p, Mode: fs.ModeDir | info.Mode().Perm()}
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("host file %s: %w", p, err)
			}
			c.files[p] = File{Path: p, Mode: fs.ModeSymlink, Target: target}
		case info.Mode().IsRegular():
			f := File{Path: p, Mode: info.Mode().Perm(), Source: p}
			if strings.HasSuffix(p, ".pyc") {
				if data, ok := epochPyc(p); ok {
					f.Source, f.Data = "", data
				}
			}
			c.files[p] = f
			if isELF(p) {
				c.pendingELF = append(c.pendingELF, p)
			}
		default:
			// Sockets, FIFOs and devices have no place in an image.
		}
		return nil
	})
}

// addClosure adds the loader and the libraries ldd lists for the ELF file p.
func (c *collector) addClosure(p string) error {
	if c.seenELF[p] {
		return nil
	}
	c.seenELF[p] = true
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	interp := ""
	dynamic := false
	for _, prog := range f.Progs {
		switch prog.Type {
		case elf.PT_INTERP:
			b := make([]byte, prog.Filesz)
			if _, err := prog.ReadAt(b, 0); err != nil {
				f.Close()
				return fmt.Errorf("%s: ELF interpreter: %w", p, err)
			}
			interp = string(bytes.TrimRight(b, "\x00"))
		case elf.PT_DYNAMIC:
			dynamic = true
		}
	}
	f.Close()
	if interp != "" {
		if err := c.addPath(interp, false); err != nil {
			return fmt.Errorf("%s: ELF interpreter: %w", p, err)
		}
	}
	if !dynamic {
		return nil // static: nothing to load
	}
	libs, err := lddLibraries(p)
	if err != nil {
		return err
	}
	for _, lib := range libs {
		if err := c.addPath(lib, false); err != nil {
			return fmt.Errorf("%s needs %s: %w", p, lib, err)
		}
	}
	return nil
}

// lddLibraries returns the paths ldd prints for p: every library of the closure and the
// loader; linux-vdso (no file) is skipped. A library ldd cannot find is an error.
func lddLibraries(p string) ([]string, error) {
	cmd := exec.Command("ldd", p)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if strings.Contains(string(out)+stderr.String(), "not a dynamic executable") {
			return nil, nil
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("ldd %s: %w: %s", p, err, strings.TrimSpace(stderr.String()))
		}
		return nil, fmt.Errorf("ldd %s: %w (is ldd, from libc-bin, installed?)", p, err)
	}
	return parseLdd(p, out)
}

// parseLdd reads ldd's output:
//
//	linux-vdso.so.1 (0x...)
//	libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)
//	/lib64/ld-linux-x86-64.so.2 (0x...)
//	libfoo.so.1 => not found
func parseLdd(p string, out []byte) ([]string, error) {
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line == "statically linked" {
			continue
		}
		if name, rest, ok := strings.Cut(line, "=>"); ok {
			rest = strings.TrimSpace(rest)
			if strings.HasPrefix(rest, "not found") {
				return nil, fmt.Errorf("ldd %s: library %s not found", p, strings.TrimSpace(name))
			}
			if f := strings.Fields(rest); len(f) > 0 && path.IsAbs(f[0]) {
				libs = append(libs, f[0])
			}
			continue
		}
		if f := strings.Fields(line); len(f) > 0 && path.IsAbs(f[0]) {
			libs = append(libs, f[0])
		}
	}
	return libs, sc.Err()
}

func isELF(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	var magic [4]byte
	n, _ := f.Read(magic[:])
	return n == 4 && string(magic[:]) == elf.ELFMAG
}

// epochPyc returns the content of the compiled Python file pyc with its recorded source
// time set to Epoch, when pyc is timestamp-based and valid for its source on the host
// (PEP 552 header: magic, flags, source mtime, source size; the source of
// dir/__pycache__/name.tag.pyc is dir/name.py).
func epochPyc(pyc string) ([]byte, bool) {
	dir, base := filepath.Split(pyc)
	if filepath.Base(dir) != "__pycache__" {
		return nil, false
	}
	name, _, ok := strings.Cut(base, ".")
	if !ok {
		return nil, false
	}
	src := filepath.Join(filepath.Dir(filepath.Clean(dir)), name+".py")
	st, err := os.Stat(src)
	if err != nil {
		return nil, false
	}
	data, err := os.ReadFile(pyc)
	if err != nil || len(data) < 16 {
		return nil, false
	}
	if binary.LittleEndian.Uint32(data[4:8]) != 0 { // hash-based: no time to fix
		return nil, false
	}
	if binary.LittleEndian.Uint32(data[8:12]) != uint32(st.ModTime().Unix()) ||
		binary.LittleEndian.Uint32(data[12:16]) != uint32(st.Size()) {
		return nil, false // stale on the host already
	}
	binary.LittleEndian.PutUint32(data[8:12], uint32(Epoch.Unix()))
	return data, true
}
