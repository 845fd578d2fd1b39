package harness

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunscDirect runs the busybox image under runsc, without containerd: runsc works on
// this machine, stdout comes through, exit codes propagate, and the leak check finds the
// sandbox and gofer of a running container by its bundle path.
func TestRunscDirect(t *testing.T) {
	runsc := Binary(t, "runsc", "")
	LeakCheck(t)
	root := RunscRoot(t)
	run := func(id, bundle string, extra ...string) (string, int) {
		t.Helper()
		args := append([]string{"--root", root, "run", "--bundle", bundle}, extra...)
		cmd := exec.Command(runsc, append(args, id)...)
		var stdout, stderr bytes.Buffer
		if len(extra) == 0 {
			// Not for --detach: the sandbox would inherit the pipes and keep them open,
			// so Run would wait for it to exit.
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
		}
		err := cmd.Run()
		var exitErr *exec.ExitError
		if err != nil && !errors.As(err, &exitErr) {
			t.Fatalf("runsc run: %v", err)
		}
		if stderr.Len() > 0 {
			t.Logf("runsc %s stderr: %s", id, stderr.String())
		}
		return stdout.String(), cmd.ProcessState.ExitCode()
	}

	if out, code := run("echo", RunscBundle(t, BusyboxImage, nil, "echo", "hi")); out != "hi\n" || code != 0 {
		t.Errorf("echo hi: output %q, exit %d; want \"hi\", 0", out, code)
	}
	if _, code := run("exit7", RunscBundle(t, BusyboxImage, nil, "sh", "-c", "exit 7")); code != 7 {
		t.Errorf("sh -c 'exit 7': exit %d, want 7", code)
	}

	bundle := RunscBundle(t, WorkloadsImage, nil, "/bin/counter")
	if _, code := run("detached", bundle, "--detach"); code != 0 {
		t.Fatalf("runsc run --detach: exit %d", code)
	}
	defer exec.Command(runsc, "--root", root, "delete", "--force", "detached").Run()
	procs, err := FindProcesses([]string{bundle})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("processes of the detached container:\n%s", formatProcs(procs))
	var names []string
	for _, p := range procs {
		names = append(names, p.Comm+"/"+p.Cmdline[0])
	}
	if joined := strings.Join(names, " "); !strings.Contains(joined, "runsc-gofer") || !strings.Contains(joined, "runsc-sandbox") {
		t.Errorf("found %v; want the runsc-sandbox and runsc-gofer of the bundle", names)
	}
	if out, err := exec.Command(runsc, "--root", root, "delete", "--force", "detached").CombinedOutput(); err != nil {
		t.Errorf("runsc delete: %v\n%s", err, out)
	}
	// Sandbox and gofer exit once the container is deleted.
	Eventually(t, 10*time.Second, "runsc processes of the bundle still running", func() bool {
		ps, _ := FindProcesses([]string{bundle})
		return len(ps) == 0
	})
}

// TestSlowinitCheckpointUnderRunsc runs slowinit under runsc with the checkpoint
// annotations the shim sets: the workload's own trigger through /proc/gvisor/checkpoint
// yields "resume" in the running copy and "restore" in a copy restored from the files,
// with memory intact in both, and the pattern is visible in the uncompressed pages file.
func TestSlowinitCheckpointUnderRunsc(t *testing.T) {
	LeakCheck(t)
	runsc := Binary(t, "runsc", "")
	root := RunscRoot(t)
	images := t.TempDir()
	args := []string{"/bin/slowinit", "-mib", "8", "-seconds", "0.2", "-checkpoint", "-interval", "100ms"}
	bundle := RunscBundle(t, WorkloadsImage, func(spec map[string]any) {
		spec["annotations"] = map[string]any{
			"dev.gvisor.internal.checkpoint.path":        images,
			"dev.gvisor.internal.checkpoint.enable":      "true",
			"dev.gvisor.internal.checkpoint.resume":      "true",
			"dev.gvisor.internal.checkpoint.compression": "none",
		}
	}, args...)
	start := func(id string, runscArgs ...string) string {
		t.Helper()
		out := filepath.Join(t.TempDir(), id+".out")
		f, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd := exec.Command(runsc, append(append([]string{"--root", root}, runscArgs...), "--detach", id)...)
		// A file, not a buffer: the detached sandbox keeps it, and Run must not wait for it.
		cmd.Stdout, cmd.Stderr = f, f
		if err := cmd.Run(); err != nil {
			b, _ := os.ReadFile(out)
			t.Fatalf("%v: %v\n%s", cmd, err, b)
		}
		t.Cleanup(func() { exec.Command(runsc, "--root", root, "delete", "--force", id).Run() })
		return out
	}

	out := start("saved", "run", "--bundle", bundle)
	WaitForOutput(t, out, "checkpoint result: resume\nmemory ok\ncount 0\ncount 1\n", 30*time.Second)
	pages, err := os.ReadFile(filepath.Join(images, "pages.img"))
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(pages, []byte("PODSNAPSHOT-PAGE")); n < 8*256 {
		t.Errorf("pages.img holds the page magic %d times, want at least %d (8 MiB of pages)", n, 8*256)
	}
	exec.Command(runsc, "--root", root, "delete", "--force", "saved").Run()

	// A restored sandbox must not write a checkpoint again, as the shim does: no annotations.
	restoreBundle := RunscBundle(t, WorkloadsImage, nil, args...)
	out = start("restored", "restore", "--image-path", images, "--bundle", restoreBundle)
	got := WaitForOutput(t, out, "count 1\n", 30*time.Second)
	if !strings.Contains(got, "checkpoint result: restore\nmemory ok\n") {
		t.Errorf("restored output %q lacks the restore result and memory ok", got)
	}
}
