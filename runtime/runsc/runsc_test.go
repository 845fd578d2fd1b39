package runsc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestGlobalArgsSortedAndComplete(t *testing.T) {
	r := &Runsc{Path: "runsc", Root: "/run/r", LogPath: "/b/runsc.log",
		Flags: map[string]string{"platform": "systrap", "network": "none", "debug": "true"}}
	got := r.argv(StartOpts{}.args("c1"))
	want := []string{"--root=/run/r", "--log=/b/runsc.log", "--log-format=json",
		"--debug=true", "--network=none", "--platform=systrap", "start", "c1"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("argv = %q\nwant %q", got, want)
	}
	noLog := (&Runsc{Path: "runsc", Root: "/r"}).argv(StateOpts{}.args("x"))
	if !reflect.DeepEqual(noLog, []string{"--root=/r", "state", "x"}) {
		t.Fatalf("argv without log = %q", noLog)
	}
}

// Every options struct's args, with its flags unset and set.
func TestSubcommandArgs(t *testing.T) {
	res := &specs.LinuxResources{}
	for _, tc := range []struct {
		name string
		got  []string
		want []string
	}{
		{"create", CreateOpts{}.args("c", "/b"), []string{"create", "--bundle", "/b", "c"}},
		{"create all", CreateOpts{IO: stdioTo{}, PidFile: "/p", ConsoleSocket: "/s", UserLog: "/u"}.args("c", "/b"),
			[]string{"create", "--bundle", "/b", "--pid-file", "/p", "--console-socket", "/s", "--user-log", "/u", "c"}},
		{"start", StartOpts{IO: stdioTo{}}.args("c"), []string{"start", "c"}},
		{"restore", RestoreOpts{ImagePath: "/img"}.args("c"), []string{"restore", "--image-path=/img", "--detach", "c"}},
		{"restore background", RestoreOpts{ImagePath: "/img", Direct: true, Background: true}.args("c"),
			[]string{"restore", "--image-path=/img", "--detach", "--direct", "--background", "c"}},
		{"checkpoint", CheckpointOpts{ImagePath: "/img"}.args("c"), []string{"checkpoint", "--image-path=/img", "c"}},
		{"checkpoint all", CheckpointOpts{ImagePath: "/img", LeaveRunning: true, Compression: "none", ExcludeCommittedZeroPages: true}.args("c"),
			[]string{"checkpoint", "--image-path=/img", "--leave-running", "--compression=none", "--exclude-committed-zero-pages", "c"}},
		{"wait", WaitOpts{}.args("c"), []string{"wait", "c"}},
		{"wait checkpoint", WaitOpts{Checkpoint: true}.args("c"), []string{"wait", "--checkpoint", "c"}},
		{"wait restore", WaitOpts{Restore: true}.args("c"), []string{"wait", "--restore", "c"}},
		{"exec", ExecOpts{}.args("c", "/b/p.json"), []string{"exec", "--detach", "--process", "/b/p.json", "c"}},
		{"exec all", ExecOpts{PidFile: "/p", InternalPidFile: "/i", ConsoleSocket: "/s"}.args("c", "/b/p.json"),
			[]string{"exec", "--detach", "--process", "/b/p.json", "--pid-file", "/p", "--internal-pid-file", "/i", "--console-socket", "/s", "c"}},
		{"kill init", KillOpts{Signal: 15}.args("c"), []string{"kill", "c", "15"}},
		{"kill all", KillOpts{Signal: 9, All: true}.args("c"), []string{"kill", "--all", "c", "9"}},
		{"kill exec", KillOpts{Signal: 9, Pid: 12}.args("c"), []string{"kill", "--pid", "12", "c", "9"}},
		{"kill probe", KillOpts{}.args("c"), []string{"kill", "c", "0"}},
		{"delete", DeleteOpts{}.args("c"), []string{"delete", "c"}},
		{"delete force", DeleteOpts{Force: true}.args("c"), []string{"delete", "--force", "c"}},
		{"state", StateOpts{}.args("c"), []string{"state", "c"}},
		{"pause", PauseOpts{}.args("c"), []string{"pause", "c"}},
		{"tar", TarRootfsUpperOpts{File: "/x/l.tar"}.args("c"), []string{"tar", "rootfs-upper", "--file", "/x/l.tar", "c"}},
		{"resume", ResumeOpts{}.args("c"), []string{"resume", "c"}},
		{"ps", PsOpts{}.args("c"), []string{"ps", "--format", "json", "c"}},
		{"stats", StatsOpts{}.args("c"), []string{"events", "--stats", "c"}},
		{"update", UpdateOpts{Resources: res}.args("c"), []string{"update", "--resources=-", "c"}},
	} {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, tc.got, tc.want)
		}
	}
}

// The methods run exactly the global flags plus what the options' args built.
func TestMethodsRunTheirArgs(t *testing.T) {
	dir := t.TempDir()
	seen := filepath.Join(dir, "argv")
	// Records its arguments, one per line, and prints what the parsing methods expect.
	bin := fakeRunsc(t, `printf '%s\n' "$@" > "`+seen+`"
for a; do case $a in
  wait) echo '{"id":"c","exitStatus":0}';;
  state) echo '{"id":"c","pid":1,"status":"running"}';;
  ps) echo '[1]';;
  events) echo '{"type":"stats","id":"c","data":{}}';;
esac; done
`)
	r := &Runsc{Path: bin, Root: dir, Flags: map[string]string{"network": "none"}}
	ctx := context.Background()
	ignore := func(_ any, err error) error { return err }
	for _, tc := range []struct {
		name string
		call func() error
		want []string
	}{
		{"create", func() error { return r.Create(ctx, "c", "/b", CreateOpts{PidFile: "/p"}) }, CreateOpts{PidFile: "/p"}.args("c", "/b")},
		{"start", func() error { return r.Start(ctx, "c", StartOpts{}) }, StartOpts{}.args("c")},
		{"restore", func() error { return r.Restore(ctx, "c", RestoreOpts{ImagePath: "/i", Background: true}) },
			RestoreOpts{ImagePath: "/i", Background: true}.args("c")},
		{"checkpoint", func() error { return r.Checkpoint(ctx, "c", CheckpointOpts{ImagePath: "/i", LeaveRunning: true}) },
			CheckpointOpts{ImagePath: "/i", LeaveRunning: true}.args("c")},
		{"wait", func() error { return ignore(r.Wait(ctx, "c", WaitOpts{})) }, WaitOpts{}.args("c")},
		{"wait checkpoint", func() error { return ignore(r.Wait(ctx, "c", WaitOpts{Checkpoint: true})) }, WaitOpts{Checkpoint: true}.args("c")},
		{"kill", func() error { return r.Kill(ctx, "c", KillOpts{Signal: 9, All: true}) }, KillOpts{Signal: 9, All: true}.args("c")},
		{"delete", func() error { return r.Delete(ctx, "c", DeleteOpts{Force: true}) }, DeleteOpts{Force: true}.args("c")},
		{"state", func() error { return ignore(r.State(ctx, "c", StateOpts{})) }, StateOpts{}.args("c")},
		{"pause", func() error { return r.Pause(ctx, "c", PauseOpts{}) }, PauseOpts{}.args("c")},
		{"tar", func() error { return r.TarRootfsUpper(ctx, "c", TarRootfsUpperOpts{File: "/l.tar"}) }, TarRootfsUpperOpts{File: "/l.tar"}.args("c")},
		{"resume", func() error { return r.Resume(ctx, "c", ResumeOpts{}) }, ResumeOpts{}.args("c")},
		{"ps", func() error { return ignore(r.Ps(ctx, "c", PsOpts{})) }, PsOpts{}.args("c")},
		{"stats", func() error { return ignore(r.Stats(ctx, "c", StatsOpts{})) }, StatsOpts{}.args("c")},
		{"update", func() error { return r.Update(ctx, "c", UpdateOpts{Resources: &specs.LinuxResources{}}) }, UpdateOpts{}.args("c")},
	} {
		if err := tc.call(); err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		data, err := os.ReadFile(seen)
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		if want := r.argv(tc.want); !reflect.DeepEqual(got, want) {
			t.Errorf("%s ran %q, want %q", tc.name, got, want)
		}
	}
}

func TestWaitForCheckpointDoesNotParse(t *testing.T) {
	bin := fakeRunsc(t, "echo 'not json'\n")
	r := &Runsc{Path: bin, Root: t.TempDir()}
	if status, err := r.Wait(context.Background(), "c1", WaitOpts{Checkpoint: true}); err != nil || status != 0 {
		t.Fatalf("Wait --checkpoint = %d, %v; want 0, nil", status, err)
	}
	if _, err := r.Wait(context.Background(), "c1", WaitOpts{}); err == nil || !strings.Contains(err.Error(), "parse") {
		t.Fatalf("plain Wait of non-JSON = %v, want a parse error", err)
	}
}

func TestLastLogError(t *testing.T) {
	for _, tc := range []struct{ name, log, want string }{
		{"json error level", `{"msg":"starting","level":"info","time":"t"}
{"msg":"FetchSpec failed: loading container: file does not exist","level":"error","time":"t"}`,
			"FetchSpec failed: loading container: file does not exist"},
		{"json fatal in warning", `{"msg":"FATAL ERROR: creating container: cannot mount","level":"warning"}`,
			"creating container: cannot mount"},
		{"last one wins", `{"msg":"first","level":"error"}
{"msg":"ok","level":"info"}
{"msg":"second","level":"error"}`, "second"},
		{"plain text", "I1130 runsc starting\nW1130 12:00:00.000 1 main.go:1] FATAL ERROR: checkpoint failed\n", "checkpoint failed"},
		{"nothing", `{"msg":"hello","level":"info"}`, ""},
	} {
		if got := LastLogError([]byte(tc.log)); got != tc.want {
			t.Errorf("%s: LastLogError = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// fakeRunsc writes a shell script that logs like runsc and exits with status rc.
func fakeRunsc(t *testing.T, script string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "runsc")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestFailedCommandSurfacesLogError(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "runsc.log")
	// An old error already in the log must not be reported for a new command.
	if err := os.WriteFile(logPath, []byte(`{"msg":"stale error","level":"error"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := fakeRunsc(t, `for a; do case $a in --log=*) log=${a#--log=};; esac; done
echo '{"msg":"creating container: bundle has no config.json","level":"error"}' >> "$log"
echo "some noise" >&2
exit 128
`)
	r := &Runsc{Path: bin, Root: dir, LogPath: logPath}
	err := r.Create(context.Background(), "c1", dir, CreateOpts{})
	if err == nil {
		t.Fatal("Create succeeded, want error")
	}
	if !strings.Contains(err.Error(), "create c1: creating container: bundle has no config.json") {
		t.Fatalf("error %q does not carry runsc's last log error", err)
	}
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Status != 128 {
		t.Fatalf("error %v does not wrap exit status 128", err)
	}
}

func TestFailedCommandFallsBackToStderr(t *testing.T) {
	bin := fakeRunsc(t, "echo 'container \"x\" does not exist' >&2; exit 1\n")
	r := &Runsc{Path: bin, Root: t.TempDir()}
	_, err := r.State(context.Background(), "x", StateOpts{})
	if err == nil || !strings.Contains(err.Error(), `container "x" does not exist`) {
		t.Fatalf("State error = %v, want stderr text", err)
	}
	if !IsNotExist(err) {
		t.Fatalf("IsNotExist(%v) = false", err)
	}
}

func TestWaitParsesExitStatus(t *testing.T) {
	bin := fakeRunsc(t, `echo '{"id":"c1","exitStatus":7}'`+"\n")
	r := &Runsc{Path: bin, Root: t.TempDir()}
	status, err := r.Wait(context.Background(), "c1", WaitOpts{})
	if err != nil || status != 7 {
		t.Fatalf("Wait = %d, %v; want 7, nil", status, err)
	}
}

func TestExecWritesProcessSpecAndRemovesIt(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "seen")
	bin := fakeRunsc(t, `while [ $# -gt 0 ]; do [ "$1" = --process ] && cp "$2" "`+out+`"; shift; done`+"\n")
	r := &Runsc{Path: bin, Root: dir}
	if err := r.Exec(context.Background(), "c1", specProcess("echo", "hi"), dir, ExecOpts{}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(out)
	if err != nil || !strings.Contains(string(data), `"args":["echo","hi"]`) {
		t.Fatalf("process spec seen by runsc = %q, %v", data, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "exec-process-*.json"))
	if len(left) != 0 {
		t.Fatalf("process spec files left behind: %v", left)
	}
}

func TestBadGlobalFlagIsNamed(t *testing.T) {
	// Like runsc: an unknown global flag fails every command with exit 2 and a message on
	// stderr, which for create goes to the container's stdio, not to the shim.
	bin := fakeRunsc(t, `for a; do case $a in --no-such-flag=*) echo "flag provided but not defined: -no-such-flag" >&2; exit 2;; esac; done
exit 0
`)
	r := &Runsc{Path: bin, Root: t.TempDir(), Flags: map[string]string{"no-such-flag": "1"}}
	var sink strings.Builder
	err := r.Create(context.Background(), "c1", t.TempDir(), CreateOpts{IO: stdioTo{&sink}})
	if err == nil || !strings.Contains(err.Error(), "flag provided but not defined: -no-such-flag") {
		t.Fatalf("Create error = %v, want runsc's flag message", err)
	}
}
