package hostproc

import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// UnmountBelow detaches every mount at or below dir, deepest first: containerd's overlay
// snapshots and task root filesystems stay mounted when a run ends early, and runsc
// leaves its null-netns bind mount in its root; the directory could not be removed
// otherwise.
func UnmountBelow(dir string) error {
	points, err := MountsBelow(dir)
	if err != nil {
		return err
	}
	// Deepest first, so a parent is never busy because of a child mount.
	sort.Slice(points, func(i, j int) bool {
		if len(points[i]) != len(points[j]) {
			return len(points[i]) > len(points[j])
		}
		return points[i] < points[j]
	})
	var errs []string
	for i, mp := range points {
		if i > 0 && points[i-1] == mp {
			continue // a stacked mount; the loop below takes them all
		}
		// Mounts can be stacked on one path (runsc stacks its null-netns bind mounts when
		// sandboxes start concurrently), so unmount until nothing is left there.
		for n := 0; n < 100; n++ {
			err := syscall.Unmount(mp, syscall.MNT_DETACH)
			if err == syscall.EINVAL || err == syscall.ENOENT {
				break
			}
			if err != nil {
				errs = append(errs, fmt.Sprintf("unmount %s: %v", mp, err))
				break
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// MountsBelow lists the mount points at or below dir (/proc/self/mountinfo), a point
// once per mount stacked on it, unescaped.
func MountsBelow(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	return points, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, and so on).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
