package lab

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// Machine describes the host, for a result table.
type Machine struct {
	CPU      string // model name
	Cores    int    // logical CPUs this process may use
	MemBytes int64
	Kernel   string
	Runsc    string // `runsc --version`, first line
}

func (m Machine) String() string {
	return fmt.Sprintf("%s, %d cores, %.1f GiB memory, Linux %s", m.CPU, m.Cores, float64(m.MemBytes)/(1<<30), m.Kernel)
}

// DescribeMachine reads /proc and uname; a field it cannot read stays empty.
func (l *Lab) DescribeMachine() Machine {
	m := Machine{CPU: "unknown CPU", Cores: runtime.NumCPU()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				kib, _ := strconv.ParseInt(f[1], 10, 64)
				m.MemBytes = kib << 10
			}
		}
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		var b strings.Builder
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b.WriteByte(byte(c))
		}
		m.Kernel = b.String()
	}
	if out, err := exec.Command(l.DepsBin+"/runsc", "--version").Output(); err == nil {
		m.Runsc, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	}
	return m
}
