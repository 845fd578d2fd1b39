package runsc

import specs "github.com/opencontainers/runtime-spec/specs-go"

func specProcess(args ...string) specs.Process {
	return specs.Process{Args: args, Cwd: "/"}
}
