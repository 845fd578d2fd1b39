package kube

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// What the kubelet changes on the host beyond its own directories, and how it is undone.

// KernelSettings are the sysctls (paths below /proc/sys) the kubelet sets for the whole
// host at start (protectKernelDefaults: false makes it set them rather than refuse to
// start): Start records them and Close writes back the values found.
var KernelSettings = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// ContainerLogLinks is where the kubelet links each container's log from; the path is
// fixed in the kubelet. Close removes the links into the cluster's directory, and the
// directory itself when Start found none.
const ContainerLogLinks = "/var/log/containers"

// LockPath is the file whose exclusive lock a cluster holds from Start to Close: the
// sysctls and /var/log/containers are host-wide, so two clusters at once would put back
// each other's values. A second cluster waits for the first (Options.LockWait).
const LockPath = "/run/podsnapshot-kube.lock"

// lockHost takes LockPath, polling until wait has passed; it returns the open file that
// holds the lock (closing it releases the lock, as does the death of the process).
func lockHost(wait time.Duration) (*os.File, error) {
	f, err := os.OpenFile(LockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("host lock: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("host lock %s (another cluster is running on this machine?): %w", LockPath, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// DefaultNodeIP returns the host's IPv4 source address for its default route, as
// `ip route get 1.1.1.1` shows it (connecting a UDP socket sends nothing). The node IP
// must not be a loopback address: the kubelet refuses one for its node, and the API
// server reaches the kubelet there (logs, exec).
func DefaultNodeIP() (net.IP, error) {
	conn, err := net.Dial("udp4", "1.1.1.1:53")
	if err != nil {
		return nil, fmt.Errorf("node IP: no default route (set Options.NodeIP): %w", err)
	}
	defer conn.Close()
	ip := conn.LocalAddr().(*net.UDPAddr).IP
	if ip.IsLoopback() || ip.IsUnspecified() {
		return nil, fmt.Errorf("node IP: default route source %s is not usable (set Options.NodeIP)", ip)
	}
	return ip.To4(), nil
}

// FreePorts returns n distinct TCP ports free on every address at the moment of the
// call, by letting the kernel pick them. Another process may take one before the daemon
// binds it; the daemon then fails to start and says so in its log.
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", ":0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// readSettings reads the current value of each of KernelSettings.
func readSettings() (map[string]string, error) {
	m := map[string]string{}
	for _, k := range KernelSettings {
		b, err := os.ReadFile(filepath.Join("/proc/sys", k))
		if err != nil {
			return nil, fmt.Errorf("sysctl %s: %w", k, err)
		}
		m[k] = strings.TrimSpace(string(b))
	}
	return m, nil
}

// restoreSettings writes back the values of saved that differ now. It returns what it
// wrote back ("KEY: NOW -> SAVED") and an error for each it could not write.
func restoreSettings(saved map[string]string) (restored []string, errs []error) {
	now, _ := readSettings()
	for _, k := range KernelSettings {
		v, ok := saved[k]
		if !ok || now[k] == v {
			continue
		}
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v+"\n"), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w", k, v, err))
			continue
		}
		restored = append(restored, fmt.Sprintf("%s: %s -> %s", k, now[k], v))
	}
	return restored, errs
}

// cgroupHierarchies are the mounted cgroup hierarchies: each cgroup v1 controller's
// (cpu, memory, pids, ..., name=systemd) and the v2 one, or just /sys/fs/cgroup on a
// pure v2 host.
func cgroupHierarchies() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER"
		fields := strings.Fields(sc.Text())
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && (fields[i+1] == "cgroup" || fields[i+1] == "cgroup2") {
				out = append(out, fields[4])
			}
		}
	}
	sort.Strings(out)
	return out, sc.Err()
}

// makeCgroupRoot creates the kubelet's cgroupRoot /name in every hierarchy: the kubelet
// checks for it in each and does not start without it. A cpuset cgroup has no CPUs nor
// memory nodes when made, and then refuses both children and tasks, so it gets its
// parent's.
func makeCgroupRoot(name string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		dir := filepath.Join(h, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("cgroup root: %w", err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			parent, err := os.ReadFile(filepath.Join(h, f))
			if err != nil {
				continue // not the cpuset hierarchy
			}
			if cur, _ := os.ReadFile(filepath.Join(dir, f)); strings.TrimSpace(string(cur)) != "" {
				continue
			}
			if err := os.WriteFile(filepath.Join(dir, f), parent, 0o644); err != nil {
				return fmt.Errorf("cgroup root %s: %w", filepath.Join(dir, f), err)
			}
		}
	}
	return nil
}

// removeCgroupRoot removes /name and every cgroup below it (the kubelet's kubepods,
// QoS and pod cgroups) in every hierarchy, deepest first. A cgroup that still holds a
// process cannot go; that is returned as an error.
func removeCgroupRoot(name string) []error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return []error{err}
	}
	var errs []error
	for _, h := range hs {
		var dirs []string
		filepath.WalkDir(filepath.Join(h, name), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- { // WalkDir lists parents before children
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errs
}

// cgroupsLeft lists the directories of cgroupRoot /name still present.
func cgroupsLeft(name string) []string {
	hs, _ := cgroupHierarchies()
	var out []string
	for _, h := range hs {
		if _, err := os.Stat(filepath.Join(h, name)); err == nil {
			out = append(out, filepath.Join(h, name))
		}
	}
	return out
}

// removeLogLinks removes the links in ContainerLogLinks that point below dir, and the
// directory itself when created (the kubelet made it) and nothing else is in it.
func removeLogLinks(dir string, created bool) error {
	ents, err := os.ReadDir(ContainerLogLinks)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("container log links: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(ContainerLogLinks, e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, dir+"/") {
			os.Remove(p)
		}
	}
	if created {
		if err := os.Remove(ContainerLogLinks); err != nil && !errors.Is(err, syscall.ENOTEMPTY) {
			return fmt.Errorf("container log links: %w", err)
		}
	}
	return nil
}
