package shim

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"

	"github.com/podsnapshot/podsnapshot/runtime/runsc"
)

// stdio names the FIFOs containerd created for a process (empty: not wanted).
type stdio struct {
	stdin, stdout, stderr string
	terminal              bool
}

func (s stdio) isNull() bool { return s.stdin == "" && s.stdout == "" && s.stderr == "" }

// processIO connects a runsc child's stdio to containerd's FIFOs, through either pipes
// or a pseudo-terminal whose master runsc hands over on a console socket.
//
// Life cycle: newProcessIO before the runsc command; runscIO() is what the command gets;
// afterStart once the command has run (closes our copies of the child's ends, receives
// the console, starts copying); wait for the copies to drain; close.
type processIO struct {
	stdio stdio

	pipes   *runcPipes
	socket  *runc.Socket
	console console.Console

	// stdinW is where stdin bytes go (pipe writer or console); closed by CloseIO.
	stdinMu sync.Mutex
	stdinW  io.WriteCloser

	copies  sync.WaitGroup
	closers []io.Closer
}

// runcPipes wraps go-runc's pipe IO so the runsc wrapper can attach it.
type runcPipes struct{ runc.IO }

func newProcessIO(s stdio) (*processIO, error) {
	p := &processIO{stdio: s}
	switch {
	case s.terminal:
		sock, err := runc.NewTempConsoleSocket()
		if err != nil {
			return nil, fmt.Errorf("create console socket: %w", err)
		}
		p.socket = sock
	case s.isNull():
		nio, err := runc.NewNullIO()
		if err != nil {
			return nil, fmt.Errorf("create null io: %w", err)
		}
		p.pipes = &runcPipes{nio}
	default:
		pio, err := runc.NewPipeIO(0, 0, func(o *runc.IOOption) {
			o.OpenStdin = s.stdin != ""
			o.OpenStdout = s.stdout != ""
			o.OpenStderr = s.stderr != ""
		})
		if err != nil {
			return nil, fmt.Errorf("create io pipes: %w", err)
		}
		p.pipes = &runcPipes{pio}
	}
	return p, nil
}

// consoleSocket is the path runsc sends the pty master to, or "".
func (p *processIO) consoleSocket() string {
	if p.socket == nil {
		return ""
	}
	return p.socket.Path()
}

// runscIO is what to attach to the runsc command, nil for a terminal.
func (p *processIO) runscIO() runsc.IO {
	if p.pipes == nil {
		return nil
	}
	return p.pipes
}

// afterStart runs once the runsc command that received the stdio has returned: it drops
// our copies of the child's pipe ends (so EOF arrives when the container closes them),
// takes the console master if there is one, and starts copying to and from the FIFOs.
func (p *processIO) afterStart(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if p.socket != nil {
		defer p.socket.Close()
		con, err := p.socket.ReceiveMaster()
		if err != nil {
			return fmt.Errorf("receive console master: %w", err)
		}
		p.console = con
		p.closers = append(p.closers, con)
		return p.copyConsole(ctx)
	}
	if p.stdio.isNull() {
		return nil
	}
	if c, ok := p.pipes.IO.(runc.StartCloser); ok {
		if err := c.CloseAfterStart(); err != nil {
			return fmt.Errorf("close child pipe ends: %w", err)
		}
	}
	return p.copyPipes(ctx)
}

func (p *processIO) copyPipes(ctx context.Context) error {
	pio := p.pipes.IO
	for _, out := range []struct {
		path string
		r    io.ReadCloser
	}{{p.stdio.stdout, pio.Stdout()}, {p.stdio.stderr, pio.Stderr()}} {
		if out.path == "" || out.r == nil {
			continue
		}
		w, err := p.openOutput(ctx, out.path)
		if err != nil {
			return err
		}
		p.copies.Add(1)
		go func(r io.ReadCloser, w io.WriteCloser) {
			defer p.copies.Done()
			_, _ = io.Copy(w, r)
			r.Close()
			w.Close()
		}(out.r, w)
	}
	if p.stdio.stdin != "" && pio.Stdin() != nil {
		r, err := fifo.OpenFifo(context.Background(), p.stdio.stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open stdin fifo %s: %w", p.stdio.stdin, err)
		}
		p.closers = append(p.closers, r)
		p.setStdin(pio.Stdin())
		go func() {
			_, _ = io.Copy(pio.Stdin(), r)
			p.closeStdin()
			r.Close()
		}()
	}
	return nil
}

func (p *processIO) copyConsole(ctx context.Context) error {
	if p.stdio.stdin != "" {
		r, err := fifo.OpenFifo(context.Background(), p.stdio.stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open stdin fifo %s: %w", p.stdio.stdin, err)
		}
		p.closers = append(p.closers, r)
		p.setStdin(nopCloser{p.console})
		go func() {
			_, _ = io.Copy(p.console, r)
		}()
	}
	if p.stdio.stdout != "" {
		w, err := p.openOutput(ctx, p.stdio.stdout)
		if err != nil {
			return err
		}
		p.copies.Add(1)
		go func() {
			defer p.copies.Done()
			// Reading the master returns EIO once the last slave closes: that is EOF.
			_, _ = io.Copy(w, p.console)
			w.Close()
		}()
	}
	return nil
}

// openOutput opens an output FIFO for writing, and once more for reading: the shim's own
// reader keeps the FIFO open when containerd's client goes away (ctr run -d), so the
// container does not die of SIGPIPE; it blocks once the FIFO is full, as under runc.
//
// A "file://" URI (`ctr run --log-uri file:///path`) appends to that file instead.
func (p *processIO) openOutput(ctx context.Context, path string) (io.WriteCloser, error) {
	if u, err := url.Parse(path); err == nil && u.Scheme != "" {
		if u.Scheme != "file" {
			return nil, fmt.Errorf("stdio URI %s: only fifo paths and file:// URIs are supported", path)
		}
		f, err := os.OpenFile(u.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, fmt.Errorf("open log file %s: %w", u.Path, err)
		}
		p.closers = append(p.closers, f)
		return f, nil
	}
	w, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open output fifo %s: %w", path, err)
	}
	r, err := fifo.OpenFifo(ctx, path, syscall.O_RDONLY, 0) // we are a writer: no wait
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open output fifo %s: %w", path, err)
	}
	p.closers = append(p.closers, w, r)
	return w, nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func (p *processIO) setStdin(w io.WriteCloser) {
	p.stdinMu.Lock()
	p.stdinW = w
	p.stdinMu.Unlock()
}

// closeStdin closes the process's stdin (CloseIO); safe to call more than once.
func (p *processIO) closeStdin() {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdinW != nil {
		p.stdinW.Close()
		p.stdinW = nil
	}
}

// resize sets the terminal size; an error when the process has no terminal.
func (p *processIO) resize(width, height uint32) error {
	if p.console == nil {
		return fmt.Errorf("process has no terminal")
	}
	return p.console.Resize(console.WinSize{Width: uint16(width), Height: uint16(height)})
}

// drain waits up to timeout for output copies to finish (the container closed its
// output); a container that leaked its stdio to a daemon must not hang Delete.
func (p *processIO) drain(timeout time.Duration) {
	done := make(chan struct{})
	go func() { p.copies.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		log.L.Warnf("stdio copy still running after %s; closing", timeout)
	}
}

// close releases every descriptor; copies still running end with errors.
func (p *processIO) close() {
	p.closeStdin()
	if p.pipes != nil {
		p.pipes.Close()
	}
	if p.socket != nil {
		p.socket.Close()
	}
	for _, c := range p.closers {
		c.Close()
	}
}
