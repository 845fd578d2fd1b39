package runsc

import (
	"io"
	"os/exec"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func specProcess(args ...string) specs.Process {
	return specs.Process{Args: args, Cwd: "/"}
}

// stdioTo sends a command's stdout and stderr to w, as a container's stdio would take them.
type stdioTo struct{ w io.Writer }

func (s stdioTo) Set(cmd *exec.Cmd) { cmd.Stdout, cmd.Stderr = s.w, s.w }
