package harness

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestContainerd starts a private containerd, imports the test images the documented way
// and checks ctr sees them with the digests the builder computed.
func TestContainerd(t *testing.T) {
	LeakCheck(t)
	c := StartContainerd(t, ContainerdOptions{})
	images := c.ImportImages(t)
	out := c.MustCtr(t, "images", "ls")
	t.Logf("ctr images ls:\n%s", out)
	for name, img := range images {
		found := false
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[0] == name && f[2] == img.Digest {
				found = true
			}
		}
		if !found {
			t.Errorf("image %s with digest %s not listed", name, img.Digest)
		}
	}
	// The Go client sees the same images.
	cl := c.Client(t)
	list, err := cl.ListImages(c.Context(context.Background()))
	if err != nil {
		t.Fatalf("client: list images: %v", err)
	}
	if len(list) != len(images) {
		t.Errorf("client lists %d images, want %d", len(list), len(images))
	}
	for _, img := range list {
		if want, ok := images[img.Name()]; !ok || img.Target().Digest.String() != want.Digest {
			t.Errorf("client: image %s %s, want one of %v", img.Name(), img.Target().Digest, images)
		}
	}
	// The images were unpacked by the import: a container can be created without a pull.
	c.MustCtr(t, "containers", "create", BusyboxImage, "probe")
	c.MustCtr(t, "containers", "rm", "probe")
	if res := c.Ctr(t, "images", "check"); res.ExitCode != 0 || strings.Contains(res.Stdout, "incomplete") {
		t.Errorf("%v", res)
	}
}

// TestContainerdRuncShimWithRunsc runs containers through the stock runc shim with runsc
// as its runc binary (runsc speaks runc's command line): a check of the harness end to end
// (PATH, ctr, images, log files, the leak check) that needs no shim of ours.
func TestContainerdRuncShimWithRunsc(t *testing.T) {
	LeakCheck(t)
	c := StartContainerd(t, ContainerdOptions{})
	c.ImportImages(t)
	// The runc shim's root defaults to /run/containerd/runc, shared by every containerd;
	// keep runsc's state inside this containerd's directory.
	runtime := []string{"--runtime", "io.containerd.runc.v2", "--runc-binary", Binary(t, "runsc", ""), "--runc-root", c.Dir + "/runsc"}
	run := func(args ...string) []string {
		return append(append([]string{"run"}, runtime...), args...)
	}

	if res := c.Ctr(t, run("--rm", BusyboxImage, "echo", "echo", "hi")...); res.ExitCode != 0 || res.Stdout != "hi\n" {
		t.Errorf("want \"hi\" and exit 0; got %v", res)
	}
	if res := c.Ctr(t, run("--rm", BusyboxImage, "exit7", "sh", "-c", "exit 7")...); res.ExitCode != 7 {
		t.Errorf("want exit 7; got %v", res)
	}

	logPath, logURI := LogFile(t, "counter")
	c.MustCtr(t, run("-d", "--log-uri", logURI, WorkloadsImage, "counter", "/bin/counter", "-interval", "100ms")...)
	WaitForOutput(t, logPath, "count 3\n", 20*time.Second)
	procs, err := FindProcesses([]string{c.Dir})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range procs {
		names = append(names, p.Cmdline[0])
	}
	t.Logf("processes of the task: %v", names)
	if joined := strings.Join(names, " "); !strings.Contains(joined, "containerd-shim-runc-v2") || !strings.Contains(joined, "runsc-sandbox") {
		t.Errorf("FindProcesses found %v; want the shim and the sandbox", names)
	}
	c.MustCtr(t, "task", "kill", "-s", "SIGKILL", "counter")
	Eventually(t, 20*time.Second, "task counter did not stop", func() bool {
		return strings.Contains(c.Ctr(t, "task", "ls").Stdout, "STOPPED")
	})
	c.MustCtr(t, "task", "rm", "counter")
	c.MustCtr(t, "container", "rm", "counter")
}
