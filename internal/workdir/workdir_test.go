package workdir

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// childEnv makes the test binary a shim stand-in: it claims the work dir named by the
// variable, serves a FUSE mount in it at image/, says "ready" and waits to be killed.
const childEnv = "WORKDIR_TEST_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		if _, err := Claim(dir); err != nil {
			panic(err)
		}
		mnt := filepath.Join(dir, "image")
		os.MkdirAll(mnt, 0o700)
		opts := &fs.Options{MountOptions: fuse.MountOptions{DirectMountStrict: true}} // no fusermount here
		if _, err := fs.Mount(mnt, &fs.Inode{}, opts); err != nil {
			os.Stdout.WriteString("no fuse: " + err.Error() + "\n")
		} else {
			os.Stdout.WriteString("ready\n")
		}
		time.Sleep(time.Hour)
	}
	os.Exit(m.Run())
}

// A claimed directory is never swept, also by its own process; released (its owner
// gone), it is removed with what is mounted in it; a directory without an owner file is
// not a pod's and stays.
func TestSweepRemovesOnlyDeadOwners(t *testing.T) {
	root := t.TempDir()
	live, err := Claim(filepath.Join(root, "k8s.io", "live"))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Release()
	dead, err := Claim(filepath.Join(root, "k8s.io", "dead"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dead.Path, "pages.img"), []byte("memory"), 0o600)
	mounted := false
	if os.Geteuid() == 0 {
		mnt := filepath.Join(dead.Path, "image")
		os.MkdirAll(mnt, 0o700)
		if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, ""); err == nil {
			mounted = true
			t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
			os.WriteFile(filepath.Join(mnt, "f"), []byte("x"), 0o600)
		}
	}
	dead.Release()
	other := filepath.Join(root, "cache", "0123")
	os.MkdirAll(other, 0o700)
	if _, err := Claim(live.Path); err == nil {
		t.Fatal("a second Claim of a live directory succeeded")
	}

	removed, err := Sweep(root)
	if err != nil || len(removed) != 1 || removed[0] != dead.Path {
		t.Fatalf("Sweep = %v, %v; want only %s (mounted: %v)", removed, err, dead.Path, mounted)
	}
	for _, keep := range []string{live.Path, other} {
		if _, err := os.Stat(keep); err != nil {
			t.Fatalf("%s was removed: %v", keep, err)
		}
	}
	if left, _ := mountinfo.GetMounts(mountinfo.PrefixFilter(root)); len(left) > 0 {
		t.Fatalf("still mounted under %s: %v", root, left[0].Mountpoint)
	}
}

// The directory of a process killed while it served a FUSE mount in it (the mount is
// dead: ENOTCONN) is removed, mount and all.
func TestSweepAfterKilledOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount FUSE")
	}
	root := t.TempDir()
	dir := filepath.Join(root, "k8s.io", "sb")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Skipf("child: %q", line)
	}
	if removed, err := Sweep(root); err != nil || len(removed) != 0 {
		t.Fatalf("Sweep with the owner alive: %v, %v", removed, err)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if _, err := os.Stat(filepath.Join(dir, "image")); !errors.Is(err, unix.ENOTCONN) {
		t.Logf("the FUSE mount of the killed process: %v (want ENOTCONN)", err)
	}
	removed, err := Sweep(root)
	if err != nil || len(removed) != 1 {
		t.Fatalf("Sweep after the owner was killed: %v, %v", removed, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s still there: %v", dir, err)
	}
	if left, _ := mountinfo.GetMounts(mountinfo.PrefixFilter(root)); len(left) > 0 {
		t.Fatalf("still mounted: %s", left[0].Mountpoint)
	}
}

// TestClaimSweepRace: a work dir left by a dead shim is claimed again (ctr reuses
// a container ID; the next pod of that sandbox ID) while another shim sweeps. Claim's
// check of the old owner file takes and drops its lock; a Sweep that opened the old
// owner file before Claim renamed the new one over it then locks the old, unlocked
// inode and removes the directory the new owner holds. Whenever Claim succeeds, its
// directory and owner file must survive a concurrent Sweep.
func TestClaimSweepRace(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "default", "app")
	for i := 0; i < 300; i++ {
		dead, err := Claim(dir)
		if err != nil {
			t.Fatal(err)
		}
		dead.Release() // its shim died
		var (
			wg      sync.WaitGroup
			claimed *Dir
			cerr    error
			removed []string
		)
		wg.Add(2)
		go func() { defer wg.Done(); removed, _ = Sweep(root) }()
		go func() { defer wg.Done(); claimed, cerr = Claim(dir) }()
		wg.Wait()
		if cerr == nil {
			_, serr := os.Stat(filepath.Join(dir, OwnerFile))
			if serr != nil {
				t.Fatalf("iteration %d: Claim succeeded but a concurrent Sweep removed the live dir (removed %v): %v", i, removed, serr)
			}
			claimed.Release()
		}
		os.RemoveAll(dir)
	}
}
