package ociarchive

import (
	"encoding/binary"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseLdd(t *testing.T) {
	out := `	linux-vdso.so.1 (0x00007ffd1a3f2000)
	libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f5b9cb6b000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f5b9bc1e000)
	/lib64/ld-linux-x86-64.so.2 (0x00007f5b9cc6e000)
`
	libs, err := parseLdd("prog", []byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/lib/x86_64-linux-gnu/libm.so.6", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if !reflect.DeepEqual(libs, want) {
		t.Fatalf("got %q, want %q", libs, want)
	}
	_, err = parseLdd("prog", []byte("\tlibfoo.so.1 => not found\n"))
	if err == nil || !strings.Contains(err.Error(), "libfoo.so.1 not found") {
		t.Fatalf("missing library: err = %v", err)
	}
}

// TestHostFilesDynamicProgram packages a dynamically linked host program (ldd itself is
// a script; ls from coreutils is ELF) and checks that its loader and libc come along.
func TestHostFilesDynamicProgram(t *testing.T) {
	prog := "/bin/ls"
	if _, err := os.Stat(prog); err != nil || !isELF(prog) {
		t.Skipf("no ELF %s on this host", prog)
	}
	files, err := HostFiles(HostBundle{Programs: []string{prog}})
	if err != nil {
		t.Fatal(err)
	}
	var haveProg, haveLibc, haveLoader bool
	for _, f := range files {
		switch {
		case f.Path == prog:
			haveProg = true
		case strings.HasPrefix(filepath.Base(f.Path), "libc.so"):
			haveLibc = true
		case strings.HasPrefix(filepath.Base(f.Path), "ld-linux"):
			haveLoader = true
		}
	}
	if !haveProg || !haveLibc || !haveLoader {
		t.Fatalf("program %v, libc %v, loader %v in %v", haveProg, haveLibc, haveLoader, files)
	}
}

func TestHostFilesDirExcludeAndPyc(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "mod.py")
	if err := os.WriteFile(src, []byte("x = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2023, 4, 9, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(src, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "__pycache__"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "skip", "deep"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "skip", "deep", "f"), nil, 0o644))
	must(os.Symlink("mod.py", filepath.Join(dir, "alias.py")))
	pyc := make([]byte, 20)
	copy(pyc, "MAGI")
	binary.LittleEndian.PutUint32(pyc[8:12], uint32(mtime.Unix()))
	binary.LittleEndian.PutUint32(pyc[12:16], 6)
	must(os.WriteFile(filepath.Join(dir, "__pycache__", "mod.cpython-311.pyc"), pyc, 0o644))
	stale := append([]byte{}, pyc...)
	binary.LittleEndian.PutUint32(stale[8:12], 12345)
	must(os.WriteFile(filepath.Join(dir, "__pycache__", "alias.cpython-311.pyc"), stale, 0o644))

	files, err := HostFiles(HostBundle{Dirs: []HostDir{{Path: dir, Exclude: []string{"skip"}}}})
	must(err)
	byPath := map[string]File{}
	for _, f := range files {
		byPath[f.Path] = f
	}
	if _, ok := byPath[filepath.Join(dir, "skip")]; ok {
		t.Fatal("excluded directory was copied")
	}
	if f := byPath[filepath.Join(dir, "alias.py")]; f.Mode&fs.ModeSymlink == 0 || f.Target != "mod.py" {
		t.Fatalf("link: %+v", f)
	}
	f := byPath[filepath.Join(dir, "__pycache__", "mod.cpython-311.pyc")]
	if f.Data == nil || binary.LittleEndian.Uint32(f.Data[8:12]) != uint32(Epoch.Unix()) {
		t.Fatalf("valid pyc not moved to Epoch: %+v", f)
	}
	if f := byPath[filepath.Join(dir, "__pycache__", "alias.cpython-311.pyc")]; f.Data != nil || f.Source == "" {
		t.Fatalf("stale pyc was rewritten: %+v", f)
	}
}
