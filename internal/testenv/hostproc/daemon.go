package hostproc

import (
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// Daemon is a long-running child (containerd, fake-gcs-server) that must not outlive
// its parent.
type Daemon struct {
	Cmd  *exec.Cmd
	done chan struct{} // closed once the child is reaped
}

// StartDaemon starts cmd in its own process group, so a Ctrl-C in the terminal reaches
// only the parent (a test binary, the demo) and its cleanup stops the daemon in order,
// and with SIGKILL as its parent-death signal, so it dies with the parent even if that
// is killed before cleaning up (a go test timeout panics and exits). The kernel sends
// that signal when the *thread* that forked the child exits, hence the goroutine locked
// to its thread for the child's whole life.
func StartDaemon(cmd *exec.Cmd) (*Daemon, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	d := &Daemon{Cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine, after the child is reaped.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(d.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return d, nil
}

// Done is closed once the daemon has exited and been reaped.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Exited tells whether the daemon has exited.
func (d *Daemon) Exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// Kill SIGKILLs the daemon and waits until it is reaped.
func (d *Daemon) Kill() {
	d.Cmd.Process.Kill()
	<-d.done
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs; it returns once the daemon is
// reaped, telling whether it had to be killed. Once the daemon has exited it does nothing.
func (d *Daemon) Stop(grace time.Duration) (killed bool) {
	if d.Exited() {
		return false
	}
	d.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return false
	case <-time.After(grace):
		d.Kill()
		return true
	}
}
