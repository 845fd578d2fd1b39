package shim

import (
	"github.com/containerd/cgroups/v3/cgroup1/stats"
	runc "github.com/containerd/go-runc"
)

// metricsFromRunsc converts `runsc events --stats` output to the cgroup v1 metrics type
// (io.containerd.cgroups.v1.Metrics) that `ctr task metrics` and CRI decode. Values are
// bytes for memory and nanoseconds for CPU, as runsc reports them.
func metricsFromRunsc(st *runc.Stats) *stats.Metrics {
	return &stats.Metrics{
		Pids: &stats.PidsStat{Current: st.Pids.Current, Limit: st.Pids.Limit},
		CPU: &stats.CPUStat{
			Usage: &stats.CPUUsage{
				Total:  st.Cpu.Usage.Total,
				Kernel: st.Cpu.Usage.Kernel,
				User:   st.Cpu.Usage.User,
				PerCPU: st.Cpu.Usage.Percpu,
			},
			Throttling: &stats.Throttle{
				Periods:          st.Cpu.Throttling.Periods,
				ThrottledPeriods: st.Cpu.Throttling.ThrottledPeriods,
				ThrottledTime:    st.Cpu.Throttling.ThrottledTime,
			},
		},
		Memory: &stats.MemoryStat{
			Cache: st.Memory.Cache,
			Usage: &stats.MemoryEntry{
				Limit:   st.Memory.Usage.Limit,
				Usage:   st.Memory.Usage.Usage,
				Max:     st.Memory.Usage.Max,
				Failcnt: st.Memory.Usage.Failcnt,
			},
			Swap: &stats.MemoryEntry{
				Limit:   st.Memory.Swap.Limit,
				Usage:   st.Memory.Swap.Usage,
				Max:     st.Memory.Swap.Max,
				Failcnt: st.Memory.Swap.Failcnt,
			},
		},
	}
}
