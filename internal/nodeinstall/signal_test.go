package nodeinstall

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

const sock = "/run/containerd/containerd.sock"

// netUnix is /proc/net/unix text: a client's connected socket with containerd's path
// (listed first, with an inode that must not be taken), the ttrpc listener, an unbound
// socket, and the listener of the gRPC socket with inode listenInode.
func netUnix(listenInode string) string {
	return `Num       RefCount Protocol Flags    Type St Inode Path
ffff8f0a01234000: 00000003 00000000 00000000 0001 03 31337 /run/containerd/containerd.sock
ffff8f0a01235000: 00000002 00000000 00010000 0001 01 20001 /run/containerd/containerd.sock.ttrpc
ffff8f0a01236000: 00000002 00000000 00000000 0002 01 20002
ffff8f0a01237000: 00000002 00000000 00010000 0001 01 ` + listenInode + ` /run/containerd/containerd.sock
`
}

// TestListeningInode takes the listener's inode and ignores a connected socket with the
// same path.
func TestListeningInode(t *testing.T) {
	inode, found, err := listeningInode(strings.NewReader(netUnix("20000")), sock)
	if err != nil || !found || inode != 20000 {
		t.Errorf("listeningInode = %d, %t, %v; want 20000", inode, found, err)
	}
	onlyClient := strings.Join(strings.Split(netUnix("20000"), "\n")[:2], "\n")
	if inode, found, err := listeningInode(strings.NewReader(onlyClient), sock); err != nil || found {
		t.Errorf("a connected socket only: %d, %t, %v; want not found", inode, found, err)
	}
	if _, found, _ := listeningInode(strings.NewReader(netUnix("20000")), "/run/containerd"); found {
		t.Error("a prefix of the path matched")
	}
}

// fakeProc is a /proc tree: net/unix, and per pid its comm and fds as symlinks.
type fakeProc struct {
	t    *testing.T
	root string
}

func (p fakeProc) netUnix(text string) {
	writeFile(p.t, filepath.Join(p.root, "net", "unix"), text, 0o444)
}

func (p fakeProc) process(pid, comm string, fds ...string) {
	writeFile(p.t, filepath.Join(p.root, pid, "comm"), comm+"\n", 0o444)
	if err := os.MkdirAll(filepath.Join(p.root, pid, "fd"), 0o755); err != nil {
		p.t.Fatal(err)
	}
	for i, target := range fds {
		if err := os.Symlink(target, filepath.Join(p.root, pid, "fd", string(rune('3'+i)))); err != nil {
			p.t.Fatal(err)
		}
	}
}

// TestSignalRestarter: SIGTERM goes to the process holding the listening socket (not to
// PID 1, which holds it too as a socket-activating systemd would, nor to a client), and
// Restart returns once a new process listens.
func TestSignalRestarter(t *testing.T) {
	p := fakeProc{t, t.TempDir()}
	p.netUnix(netUnix("20000"))
	p.process("1", "systemd", "socket:[20000]")
	p.process("500", "containerd", "/dev/null", "socket:[20000]", "socket:[20001]")
	p.process("600", "kubelet", "socket:[31337]")
	var killed []int
	r := SignalRestarter{Socket: sock, ProcRoot: p.root, PollInterval: time.Millisecond, Log: logrus.New(),
		Kill: func(pid int, sig syscall.Signal) error {
			if sig != syscall.SIGTERM {
				t.Errorf("signal %v, want SIGTERM", sig)
			}
			killed = append(killed, pid)
			// The supervisor starts a new containerd, which listens on a new socket.
			go func() {
				time.Sleep(20 * time.Millisecond)
				p.process("700", "containerd", "socket:[20100]")
				p.netUnix(netUnix("20100"))
			}()
			return nil
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	restarted, err := r.Restart(ctx, "test")
	if err != nil || !restarted {
		t.Fatalf("Restart = %t, %v", restarted, err)
	}
	if len(killed) != 1 || killed[0] != 500 {
		t.Errorf("signalled %v, want [500]", killed)
	}
}

// TestSignalRestarterErrors: no listener, no owner, and a containerd that does not come
// back are errors naming the socket.
func TestSignalRestarterErrors(t *testing.T) {
	p := fakeProc{t, t.TempDir()}
	r := SignalRestarter{Socket: sock, ProcRoot: p.root, PollInterval: time.Millisecond, Log: logrus.New(),
		Kill: func(int, syscall.Signal) error { return nil }}
	ctx := context.Background()

	p.netUnix(netUnix("20000")[:strings.LastIndex(netUnix("20000"), "ffff8f0a01237000")])
	if _, err := r.Restart(ctx, "test"); err == nil || !strings.Contains(err.Error(), "no process listens on containerd's socket "+sock) {
		t.Errorf("no listener: err = %v", err)
	}
	p.netUnix(netUnix("20000"))
	if _, err := r.Restart(ctx, "test"); err == nil || !strings.Contains(err.Error(), "no process holds containerd's socket "+sock+" (socket:[20000])") {
		t.Errorf("no owner: err = %v", err)
	}
	p.process("500", "containerd", "socket:[20000]")
	tctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if _, err := r.Restart(tctx, "test"); err == nil || !strings.Contains(err.Error(), "containerd did not come back on "+sock+" after SIGTERM to pid 500") {
		t.Errorf("not back: err = %v", err)
	}
}
