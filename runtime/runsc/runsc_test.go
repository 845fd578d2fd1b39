package runsc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestGlobalArgsSortedAndComplete(t *testing.T) {
	r := &Runsc{Path: "runsc", Root: "/run/r", LogPath: "/b/runsc.log",
		Flags: map[string]string{"platform": "systrap", "network": "none", "debug": "true"}}
	got := r.Args("start", "c1")
	want := []string{"--root=/run/r", "--log=/b/runsc.log", "--log-format=json",
		"--debug=true", "--network=none", "--platform=systrap", "start", "c1"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Args = %q\nwant %q", got, want)
	}
	noLog := (&Runsc{Path: "runsc", Root: "/r"}).Args("state", "x")
	if !reflect.DeepEqual(noLog, []string{"--root=/r", "state", "x"}) {
		t.Fatalf("Args without log = %q", noLog)
	}
}

func TestSubcommandArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  []string
		want []string
	}{
		{"kill init", KillArgs("c", 15, false, 0), []string{"kill", "c", "15"}},
		{"kill all", KillArgs("c", 9, true, 0), []string{"kill", "--all", "c", "9"}},
		{"kill exec", KillArgs("c", 9, false, 12), []string{"kill", "--pid", "12", "c", "9"}},
		{"restore", RestoreArgs("c", RestoreOpts{ImagePath: "/img"}), []string{"restore", "--image-path=/img", "--detach", "c"}},
		{"restore background", RestoreArgs("c", RestoreOpts{ImagePath: "/img", Direct: true, Background: true}),
			[]string{"restore", "--image-path=/img", "--detach", "--direct", "--background", "c"}},
	} {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, tc.got, tc.want)
		}
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
	_, err := r.State(context.Background(), "x")
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
	status, err := r.Wait(context.Background(), "c1")
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
