package shim

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	runcopts "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/core/runtime"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

func TestLoadConfigFromRuntimeOptions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shim.toml")
	if err := os.WriteFile(path, []byte("log_level = \"debug\"\n[runsc]\nroot = \"/run/x\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	opts, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: path})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(opts)
	if err != nil || cfg.LogLevel != "debug" || cfg.Runsc.Root != "/run/x" || cfg.Path != path {
		t.Fatalf("loadConfig = %+v, %v", cfg, err)
	}

	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("[runsc]\nbinary = \"x\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	opts, _ = typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: bad})
	if _, err := loadConfig(opts); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "runsc.binary") {
		t.Fatalf("bad config error = %v, want file and key named", err)
	}

	// containerd's CRI sends a runtime's inline options table as ConfigBody (TOML) when it
	// has no ConfigPath: the same keys as the file.
	opts, _ = typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte("stream_restore = false\nwork_dir = \"/var/lib/x\"\n")})
	cfg, err = loadConfig(opts)
	if err != nil || cfg.StreamRestore || cfg.WorkDir != "/var/lib/x" {
		t.Fatalf("loadConfig of an inline options table = %+v, %v", cfg, err)
	}
	opts, _ = typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte("stream_restor = false\n")})
	if _, err := loadConfig(opts); err == nil || !strings.Contains(err.Error(), "ConfigBody") || !strings.Contains(err.Error(), "stream_restor") {
		t.Fatalf("bad inline config error = %v, want the options table and key named", err)
	}
	opts, _ = typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: path, ConfigBody: []byte("stream_restore = false\n")})
	if _, err := loadConfig(opts); err == nil || !strings.Contains(err.Error(), "ConfigBody") || !strings.Contains(err.Error(), path) {
		t.Fatalf("ConfigPath and ConfigBody both set: %v", err)
	}

	wrong, _ := typeurl.MarshalAnyToProto(&eventstypes.TaskStart{ContainerID: "x"})
	if _, err := loadConfig(wrong); err == nil || !strings.Contains(err.Error(), "runtimeoptions.v1.Options") {
		t.Fatalf("options of another type: %v", err)
	}
}

// Every event type the shim sends (found in its source, so a new send is covered without
// editing this test) has a containerd topic: forward drops the others.
func TestEveryPublishedEventHasATopic(t *testing.T) {
	sent := sentEventTypes(t)
	for _, want := range []string{"TaskCreate", "TaskStart", "TaskExit", "TaskDelete", "TaskExecAdded",
		"TaskExecStarted", "TaskPaused", "TaskResumed", "TaskCheckpointed", "TaskOOM"} {
		if !sent[want] {
			t.Errorf("the shim never sends eventstypes.%s (or the test no longer finds its sends)", want)
		}
	}
	for name := range sent {
		mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName("containerd.events." + name))
		if err != nil {
			t.Errorf("eventstypes.%s: %v", name, err)
			continue
		}
		if e := mt.New().Interface(); runtime.GetTopic(e) == runtime.TaskUnknownTopic {
			t.Errorf("no topic for %T", e)
		}
	}
	if runtime.GetTopic("not an event") != runtime.TaskUnknownTopic {
		t.Error("a non-event got a topic")
	}
}

// sentEventTypes returns the names T of every s.send(&eventstypes.T{...}) in the
// package's non-test files.
func sentEventTypes(t *testing.T) map[string]bool {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	sent := map[string]bool{}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 1 {
				return true
			}
			if fn, ok := call.Fun.(*ast.SelectorExpr); !ok || fn.Sel.Name != "send" {
				return true
			}
			if u, ok := call.Args[0].(*ast.UnaryExpr); ok {
				if lit, ok := u.X.(*ast.CompositeLit); ok {
					if sel, ok := lit.Type.(*ast.SelectorExpr); ok {
						if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "eventstypes" {
							sent[sel.Sel.Name] = true
						}
					}
				}
			}
			return true
		})
	}
	return sent
}

// The exit of a detached `runsc exec` can be reaped before its pid file is read; the
// service must still deliver it to the waiter that registers afterwards.
func TestExitsReachLateAndEarlyWaiters(t *testing.T) {
	s := &Service{pidWaiters: map[int]chan int{}, unclaimed: map[int]runc.Exit{}}
	exits := make(chan runc.Exit)
	go s.reapExits(exits)

	exits <- runc.Exit{Pid: 100, Status: 3, Timestamp: time.Now()} // nobody waits yet
	early := s.awaitPid(200)
	exits <- runc.Exit{Pid: 200, Status: 7, Timestamp: time.Now()}
	late := s.awaitPid(100)
	close(exits)

	for _, tc := range []struct {
		ch   <-chan int
		want int
	}{{late, 3}, {early, 7}} {
		select {
		case got := <-tc.ch:
			if got != tc.want {
				t.Errorf("exit status %d, want %d", got, tc.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("exit with status %d never delivered", tc.want)
		}
	}
}

func TestFileURIOutput(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.log")
	p := &processIO{}
	w, err := p.openOutput(context.Background(), "file://"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	p.close()
	if got, _ := os.ReadFile(path); string(got) != "hello\n" {
		t.Fatalf("log file holds %q", got)
	}
	if _, err := p.openOutput(context.Background(), "binary:///usr/bin/logger"); err == nil {
		t.Fatal("binary:// URIs are not supported and must say so")
	}
}

// ctr task checkpoint's flags arrive as runc's CheckpointOptions: what the shim cannot
// honour is refused, naming the flag; --exit is what postCheckpoint: stop does anyway.
func TestCheckpointOptions(t *testing.T) {
	any := func(o *runcopts.CheckpointOptions) *ptypes.Any {
		a, err := typeurl.MarshalAnyToProto(o)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	for _, c := range []struct {
		opts *ptypes.Any
		stop bool
		want string // "" accepted
	}{
		{nil, false, ""},
		{any(&runcopts.CheckpointOptions{}), false, ""},
		{any(&runcopts.CheckpointOptions{Exit: true}), true, ""},
		{any(&runcopts.CheckpointOptions{Exit: true}), false, "exit (ctr --exit)"},
		{any(&runcopts.CheckpointOptions{ImagePath: "/tmp/x"}), true, "image_path (ctr --image-path)"},
		{any(&runcopts.CheckpointOptions{WorkPath: "/tmp/w", FileLocks: true}), false, "work_path (ctr --work-path), file_locks"},
		{any(&runcopts.CheckpointOptions{OpenTcp: true}), false, "open_tcp"},
	} {
		err := checkOptions(c.opts, c.stop)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("checkOptions(%v, stop %v) = %v, want accepted", c.opts, c.stop, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !errdefs.IsInvalidArgument(err)):
			t.Errorf("checkOptions(%v, stop %v) = %v, want an invalid-argument error naming %q", c.opts, c.stop, err, c.want)
		}
	}
	wrong, _ := typeurl.MarshalAnyToProto(&eventstypes.TaskStart{ContainerID: "x"})
	if err := checkOptions(wrong, false); err == nil || !strings.Contains(err.Error(), "CheckpointOptions") {
		t.Errorf("options of another type: %v", err)
	}
}
