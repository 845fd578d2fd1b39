package nodeinstall

import (
	"context"
	"fmt"
	"os"
	"strconv"

	"github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
	"github.com/sirupsen/logrus"
)

// Restarter makes containerd read its config again.
type Restarter interface {
	// Restart restarts containerd, or asks for it, and returns once a new containerd
	// runs where it can tell (it need not serve CRI yet: the caller waits for that). why
	// says what changed, for the log. restarted is false when the restart is left to an
	// operator. Errors name the socket, process or unit.
	Restart(ctx context.Context, why string) (restarted bool, err error)
}

// ManualRestarter never restarts containerd (--restart=none): it logs the command an
// operator must run on the node and leaves the waiting to the caller.
type ManualRestarter struct {
	// Unit is containerd's systemd unit, for the command logged.
	Unit string
	Log  logrus.FieldLogger
}

// Restart logs the command and returns restarted false.
func (m ManualRestarter) Restart(_ context.Context, why string) (bool, error) {
	m.Log.Warnf("containerd must be restarted (%s) and --restart=none: run on the node: systemctl restart %s", why, m.Unit)
	return false, nil
}

// SystemdRestarter restarts containerd's unit through the host's systemd over its
// private D-Bus socket (no D-Bus daemon involved); needs root.
type SystemdRestarter struct {
	// Unit is containerd's systemd unit, e.g. containerd.service.
	Unit string
	// Socket is where this process reaches systemd's private socket: the host's
	// /run/systemd/private under the host root; "" means /run/systemd/private.
	Socket string
	Log    logrus.FieldLogger
}

// connect opens the connection dbus.NewSystemdConnectionContext opens, at s.Socket: that
// function has the path fixed, which would need the host's /run/systemd mounted at the
// same path in the pod besides the host root.
func (s SystemdRestarter) connect(ctx context.Context) (*dbus.Conn, string, error) {
	socket := s.Socket
	if socket == "" {
		socket = "/run/systemd/private"
	}
	conn, err := dbus.NewConnection(func() (*godbus.Conn, error) {
		c, err := godbus.Dial("unix:path="+socket, godbus.WithContext(ctx))
		if err != nil {
			return nil, err
		}
		// EXTERNAL with the numeric uid, as go-systemd does (no user name lookup); no
		// Hello: systemd's private socket is no bus.
		if err := c.Auth([]godbus.Auth{godbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	})
	return conn, socket, err
}

// Restart asks systemd to restart the unit (job mode "replace") and waits for the job to
// finish: containerd's unit is Type=notify, so "done" means the new containerd started.
func (s SystemdRestarter) Restart(ctx context.Context, why string) (bool, error) {
	conn, socket, err := s.connect(ctx)
	if err != nil {
		return false, fmt.Errorf("restart %s: connect to systemd at %s: %w", s.Unit, socket, err)
	}
	defer conn.Close()
	s.Log.Infof("restarting containerd (%s): systemctl restart %s", why, s.Unit)
	done := make(chan string, 1)
	if _, err := conn.RestartUnitContext(ctx, s.Unit, "replace", done); err != nil {
		return false, fmt.Errorf("restart %s through systemd: %w", s.Unit, err)
	}
	select {
	case result := <-done:
		if result != "done" {
			return false, fmt.Errorf("restart %s through systemd: job %s (journalctl -u %s says why)", s.Unit, result, s.Unit)
		}
		return true, nil
	case <-ctx.Done():
		return false, fmt.Errorf("restart %s through systemd: %w", s.Unit, ctx.Err())
	}
}
