package runsc

import (
	"os/exec"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Every runsc command has one options struct here. Its args method builds the command's
// argument vector after the global flags: the subcommand, its flags in a fixed order, then
// the container ID (and, for kill, the signal). The methods in commands.go run exactly
// what args returns, so the tests of args are the tests of what runsc is asked to do.

// IO is what a command's stdio is connected to; go-runc's pipe, null and console IO
// implementations satisfy it.
type IO interface {
	Set(*exec.Cmd)
}

// CreateOpts are the options of `runsc create`.
type CreateOpts struct {
	// IO is attached to the created sandbox (for a sandbox container the sandbox process
	// keeps these descriptors as the container's stdio). Nil: /dev/null.
	IO IO
	// PidFile receives the sandbox (or gofer-side) pid.
	PidFile string
	// ConsoleSocket is the path of a unix socket that receives the pty master.
	ConsoleSocket string
	// UserLog is where the sandbox writes user-visible logs (sandbox containers only).
	UserLog string
}

func (o CreateOpts) args(id, bundle string) []string {
	args := []string{"create", "--bundle", bundle}
	if o.PidFile != "" {
		args = append(args, "--pid-file", o.PidFile)
	}
	if o.ConsoleSocket != "" {
		args = append(args, "--console-socket", o.ConsoleSocket)
	}
	if o.UserLog != "" {
		args = append(args, "--user-log", o.UserLog)
	}
	return append(args, id)
}

// StartOpts are the options of `runsc start`.
type StartOpts struct {
	// IO is attached for subcontainers, whose stdio is donated at start; nil for a
	// sandbox container, whose stdio was given at create.
	IO IO
}

func (o StartOpts) args(id string) []string { return []string{"start", id} }

// RestoreOpts are the options of `runsc restore`; the shim always restores detached.
type RestoreOpts struct {
	// ImagePath is the directory holding checkpoint.img and, if present, pages files.
	ImagePath string
	// Direct reads the image files with O_DIRECT.
	Direct bool
	// Background restores application pages in the background after the sandbox resumes.
	Background bool
	// IO as for StartOpts.
	IO IO
}

func (o RestoreOpts) args(id string) []string {
	args := []string{"restore", "--image-path=" + o.ImagePath, "--detach"}
	if o.Direct {
		args = append(args, "--direct")
	}
	if o.Background {
		args = append(args, "--background")
	}
	return append(args, id)
}

// CheckpointOpts are the options of `runsc checkpoint`.
type CheckpointOpts struct {
	// ImagePath is the directory the image files are written to.
	ImagePath string
	// LeaveRunning resumes the sandbox after the save instead of stopping it.
	LeaveRunning bool
	// Compression is runsc's own image compression: "none" or "flate-best-speed";
	// empty: runsc's default.
	Compression string
	// ExcludeCommittedZeroPages leaves zero-filled pages out of the image even where
	// gVisor knows they were committed (--exclude-committed-zero-pages): a smaller image
	// for a longer save.
	ExcludeCommittedZeroPages bool
}

func (o CheckpointOpts) args(id string) []string {
	args := []string{"checkpoint", "--image-path=" + o.ImagePath}
	if o.LeaveRunning {
		args = append(args, "--leave-running")
	}
	if o.Compression != "" {
		args = append(args, "--compression="+o.Compression)
	}
	if o.ExcludeCommittedZeroPages {
		args = append(args, "--exclude-committed-zero-pages")
	}
	return append(args, id)
}

// WaitOpts are the options of `runsc wait`. With neither set, wait returns when the
// container exits; set at most one.
type WaitOpts struct {
	// Checkpoint waits for the sandbox's next completed checkpoint (one requested by the
	// workload or by `runsc checkpoint`) instead.
	Checkpoint bool
	// Restore waits for the sandbox's restore to complete instead.
	Restore bool
	// Started, when set, is called with the pid of the `runsc wait` process once it
	// runs: a caller that must know when the wait reaches the sandbox (gVisor waits for
	// the checkpoint after the one current when the request arrives) watches it.
	Started func(pid int)
}

func (o WaitOpts) args(id string) []string {
	args := []string{"wait"}
	if o.Checkpoint {
		args = append(args, "--checkpoint")
	}
	if o.Restore {
		args = append(args, "--restore")
	}
	return append(args, id)
}

// ExecOpts are the options of `runsc exec`; the shim always execs detached, with the
// process spec in a file.
type ExecOpts struct {
	IO IO
	// PidFile receives the pid of the detached `runsc exec` process that lives as long
	// as the exec'd process and exits with its status.
	PidFile string
	// InternalPidFile receives the process's pid inside the sandbox (for kill --pid).
	InternalPidFile string
	ConsoleSocket   string
}

// args takes the path of the process spec file that Exec writes.
func (o ExecOpts) args(id, processFile string) []string {
	args := []string{"exec", "--detach", "--process", processFile}
	if o.PidFile != "" {
		args = append(args, "--pid-file", o.PidFile)
	}
	if o.InternalPidFile != "" {
		args = append(args, "--internal-pid-file", o.InternalPidFile)
	}
	if o.ConsoleSocket != "" {
		args = append(args, "--console-socket", o.ConsoleSocket)
	}
	return append(args, id)
}

// KillOpts are the options of `runsc kill`: which signal goes to which processes.
type KillOpts struct {
	// Signal is the signal number, e.g. 9 for SIGKILL. 0 is sent as 0 (a liveness check).
	Signal int
	// All signals every process of the container instead of its init.
	All bool
	// Pid signals the process with this pid inside the sandbox instead of the container's
	// init; 0: init.
	Pid int
}

func (o KillOpts) args(id string) []string {
	args := []string{"kill"}
	if o.All {
		args = append(args, "--all")
	}
	if o.Pid != 0 {
		args = append(args, "--pid", strconv.Itoa(o.Pid))
	}
	return append(args, id, strconv.Itoa(o.Signal))
}

// DeleteOpts are the options of `runsc delete`.
type DeleteOpts struct {
	// Force also kills a container that is still running.
	Force bool
}

func (o DeleteOpts) args(id string) []string {
	args := []string{"delete"}
	if o.Force {
		args = append(args, "--force")
	}
	return append(args, id)
}

// StateOpts are the options of `runsc state` (none yet).
type StateOpts struct{}

func (StateOpts) args(id string) []string { return []string{"state", id} }

// PauseOpts are the options of `runsc pause` (none yet).
type PauseOpts struct{}

func (PauseOpts) args(id string) []string { return []string{"pause", id} }

// ResumeOpts are the options of `runsc resume` (none yet).
type ResumeOpts struct{}

func (ResumeOpts) args(id string) []string { return []string{"resume", id} }

// TarRootfsUpperOpts are the options of `runsc tar rootfs-upper`.
type TarRootfsUpperOpts struct {
	// File receives the tar archive (created or truncated by runsc); required.
	File string
}

func (o TarRootfsUpperOpts) args(id string) []string {
	return []string{"tar", "rootfs-upper", "--file", o.File, id}
}

// PsOpts are the options of `runsc ps` (none yet; the output is always JSON, which Ps
// parses).
type PsOpts struct{}

func (PsOpts) args(id string) []string { return []string{"ps", "--format", "json", id} }

// StatsOpts are the options of `runsc events --stats`, one sample of resource usage
// (none yet).
type StatsOpts struct{}

func (StatsOpts) args(id string) []string { return []string{"events", "--stats", id} }

// UpdateOpts are the options of `runsc update`.
type UpdateOpts struct {
	// Resources are the new limits, passed as JSON on stdin (--resources=-).
	Resources *specs.LinuxResources
}

func (UpdateOpts) args(id string) []string { return []string{"update", "--resources=-", id} }
