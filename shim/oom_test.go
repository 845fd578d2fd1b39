package shim

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

const hostMountinfo = `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
33 30 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

func TestMemcgDir(t *testing.T) {
	for _, tc := range []struct {
		name, cgroup, mountinfo, want string
	}{
		{"cgroup v1", "5:devices:/\n4:memory:/default/c1\n0::/\n", hostMountinfo, "/sys/fs/cgroup/memory/default/c1"},
		{"joined controllers", "3:cpu,memory:/kubepods/pod1/c1\n",
			"34 30 0:31 / /sys/fs/cgroup/cpu,memory rw - cgroup cgroup rw,cpu,memory\n", "/sys/fs/cgroup/cpu,memory/kubepods/pod1/c1"},
		{"mount of a sub-cgroup", "4:memory:/outer/inner/c1\n",
			"34 30 0:31 /outer /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", "/sys/fs/cgroup/memory/inner/c1"},
		{"root cgroup", "4:memory:/\n", hostMountinfo, "/sys/fs/cgroup/memory"},
		{"cgroup v2 only", "0::/user.slice\n", "40 30 0:37 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", ""},
		{"memory not mounted", "4:memory:/c1\n", "33 30 0:30 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n", ""},
		{"not memsw", "4:memsw:/c1\n", hostMountinfo, ""},
	} {
		got, err := memcgDir([]byte(tc.cgroup), []byte(tc.mountinfo))
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s: memcgDir = %q, want an error", tc.name, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: memcgDir = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestOwnMemcg(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "cgroup.sane_behavior"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	pod := filepath.Join(root, "default", "c1")
	shim := filepath.Join(root, "system.slice")
	for _, tc := range []struct {
		name          string
		sandbox, shim string
		want          bool
	}{
		{"own cgroup", pod, shim, true},
		{"shares the shim's", shim, shim, false},
		{"hierarchy root", root, shim, false},
		{"unknown", "", shim, false},
	} {
		if got := ownMemcg(tc.sandbox, tc.shim); got != tc.want {
			t.Errorf("%s: ownMemcg = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// memcgForTest creates a cgroup v1 memory cgroup limited to limit bytes under the
// shim's own, or skips the test where that is not possible (not root, cgroup v2).
func memcgForTest(t *testing.T, limit int) string {
	t.Helper()
	own, err := memcgOfPid(os.Getpid())
	if err != nil {
		t.Skipf("no cgroup v1 memory controller: %v", err)
	}
	dir := filepath.Join(own, fmt.Sprintf("podsnapshot-oomtest-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot create a memory cgroup: %v", err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	if err := os.WriteFile(filepath.Join(dir, "memory.limit_in_bytes"), []byte(fmt.Sprint(limit)), 0); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The kernel's OOM notification reaches wait; the cgroup's removal and close end it.
func TestOOMEventsFromKernel(t *testing.T) {
	dir := memcgForTest(t, 16<<20)
	ev, err := openOOMEvents(dir)
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 4)
	go func() {
		for {
			err := ev.wait()
			waited <- err
			if err != nil {
				return
			}
		}
	}()
	// tail buffers a line that never ends: it grows until the OOM killer stops it.
	cmd := exec.Command("sh", "-c", `echo $$ > "$1/cgroup.procs" && exec tail /dev/zero`, "sh", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("wait = %v, want an OOM", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no OOM event within 30s")
	}
	_ = cmd.Wait() // the OOM killer ends it; the cgroup is empty afterwards
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case err := <-waited:
			if err == nil {
				continue // a second OOM of the same kill
			}
			if !errors.Is(err, errOOMWatchEnded) {
				t.Fatalf("wait after removal = %v", err)
			}
			if ev.close() {
				t.Error("close reported an OOM of a removed cgroup")
			}
			return
		case <-time.After(10 * time.Second):
			t.Fatal("the cgroup's removal did not end the watch")
		}
	}
}

// close wakes a blocked wait: the sandbox exited while its cgroup stays.
func TestOOMEventsCloseEndsWait(t *testing.T) {
	ev, err := openOOMEvents(memcgForTest(t, 64<<20))
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- ev.wait() }()
	time.Sleep(50 * time.Millisecond)
	if ev.close() {
		t.Error("close reported an OOM that did not happen")
	}
	select {
	case err := <-waited:
		if !errors.Is(err, errOOMWatchEnded) {
			t.Fatalf("wait after close = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("close did not wake wait")
	}
}
