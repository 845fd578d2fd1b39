package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/agent"
	"github.com/podsnapshot/podsnapshot/internal/testenv"
	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
)

// The guide's names.
const (
	storageConfigName = "example-pod-snapshot-storage-config"
	policyName        = "example-pod-snapshot-policy"
	namespace         = "default"
	podName           = "counter"
	eventReason       = "GKEPodSnapshotting"
)

// walk is the transcript: each kubectl command is printed with its output.
type walk struct {
	ctx       context.Context
	e         *env
	triggerAt int
	res       *results
}

// results holds what the demo measured.
type results struct {
	snapshot                   string
	policyToNode               time.Duration // kubectl apply of the policy -> in the node's policy_dir
	coldReady, coldFirst       time.Duration // apply -> Ready, apply -> first log line
	coldSaved                  time.Duration // apply -> "Count: N" (the state the snapshot holds)
	triggerToAvailable         time.Duration // "Count: N" (the trigger) -> AllSnapshotsAvailable seen
	restoreReady, restoreFirst time.Duration // apply -> Ready, apply -> first line of the restored copy
	coldResult, restoredResult string        // the "GKE Pod Snapshot: ..." lines
	triggerAt                  int
}

func (w *walk) run() error {
	w.res.triggerAt = w.triggerAt
	if err := w.install(); err != nil {
		return err
	}
	if err := w.policy(); err != nil {
		return err
	}
	if err := w.coldPod(); err != nil {
		return err
	}
	return w.restoredPod()
}

// section prints a heading.
func section(title string) { fmt.Printf("\n### %s\n\n", title) }

// note prints a line of commentary.
func note(format string, args ...any) { fmt.Printf("# %s\n", fmt.Sprintf(format, args...)) }

// kubectl prints "$ kubectl ARGS" and runs it in the demo directory, printing its
// output; a non-zero exit is an error.
func (w *walk) kubectl(args ...string) (string, error) {
	fmt.Printf("$ kubectl %s\n", shellQuote(args))
	ctx, cancel := context.WithTimeout(w.ctx, 2*time.Minute)
	defer cancel()
	cmd := kubectlCmd(ctx, w.e.kubeconfig, args...)
	cmd.Dir = w.e.dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	fmt.Print(out.String())
	if s := out.String(); s != "" && !strings.HasSuffix(s, "\n") {
		fmt.Println()
	}
	if err != nil && w.ctx.Err() != nil {
		return out.String(), context.Cause(w.ctx)
	}
	if err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), nil
}

// quiet runs kubectl without printing.
func (w *walk) quiet(args ...string) (string, error) {
	return kubectlQuiet(w.ctx, w.e.kubeconfig, args...)
}

// writeManifest writes manifests/name and prints it as `cat` would.
func (w *walk) writeManifest(name, yaml string) (string, error) {
	rel := filepath.Join("manifests", name)
	fmt.Printf("$ cat %s\n%s", rel, yaml)
	return rel, os.WriteFile(filepath.Join(w.e.dir, rel), []byte(yaml), 0o644)
}

// waitFor polls check every interval until it returns true, for at most timeout.
func (w *walk) waitFor(what string, timeout, interval time.Duration, check func() bool) error {
	deadline := time.Now().Add(timeout)
	for !check() {
		if w.ctx.Err() != nil {
			return fmt.Errorf("waiting for %s: %w", what, context.Cause(w.ctx))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s after %v", what, timeout)
		}
		time.Sleep(interval)
	}
	return nil
}

// 1. A cluster without podsnapshot, then podsnapshot installed as a user would: the
// image pushed, the kustomization applied, the agent DaemonSet's init container
// installing each node.
func (w *walk) install() error {
	e := w.e
	section(fmt.Sprintf("1. A %d-node cluster, then podsnapshot: make push, kubectl apply -k", e.nodes))
	note("images built in %.1fs; Kubernetes (etcd, kube-apiserver, kube-controller-manager, kube-scheduler; per node containerd, kubelet, kube-proxy) in %.1fs", e.setupTook.Seconds(), e.kubeTook.Seconds())
	note("to look around while the demo runs: export KUBECONFIG=%s PATH=%s:$PATH", e.kubeconfig, e.depsBin)
	if _, err := w.kubectl("get", "nodes", "-o", "wide"); err != nil {
		return err
	}
	// A copy of deploy/ in the demo directory: make push points its kustomization at the
	// pushed image, as it does the checkout's own by default.
	if out, err := exec.Command("cp", "-r", filepath.Join(e.repo, "deploy"), filepath.Join(e.dir, "deploy")).CombinedOutput(); err != nil {
		return fmt.Errorf("copy deploy/: %v: %s", err, out)
	}
	begin := time.Now()
	kust := filepath.Join(e.dir, "deploy", "kubernetes")
	if err := w.command("make", "-C", e.repo, "--no-print-directory", "push", "REGISTRY="+e.reg.Host+"/demo", "INSECURE=true",
		"OUT="+filepath.Join(e.dir, "out"),
		"KUSTOMIZATION="+filepath.Join(kust, "kustomization.yaml")+","+filepath.Join(kust, "uninstall", "kustomization.yaml")); err != nil {
		return err
	}
	// The demo's own setting: the controller reaches the bucket at fake-gcs-server (the
	// shims get it from their node's containerd environment).
	overlay := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../../deploy/kubernetes
patches:
- target: {kind: Deployment, name: podsnapshot-controller}
  patch: |-
    - op: add
      path: /spec/template/spec/containers/0/env
      value: [{name: STORAGE_EMULATOR_HOST, value: %q}]
`, e.gcs.Host)
	if err := os.MkdirAll(filepath.Join(e.manifests, "install"), 0o755); err != nil {
		return err
	}
	if _, err := w.writeManifest(filepath.Join("install", "kustomization.yaml"), overlay); err != nil {
		return err
	}
	if _, err := w.kubectl("apply", "-k", "manifests/install"); err != nil {
		return err
	}
	if _, err := w.kubectl("-n", "podsnapshot-system", "rollout", "status", "daemonset/podsnapshot-agent", "--timeout=180s"); err != nil {
		return err
	}
	if _, err := w.kubectl("-n", "podsnapshot-system", "rollout", "status", "deployment/podsnapshot-controller", "--timeout=120s"); err != nil {
		return err
	}
	e.installTook = time.Since(begin)
	note("make push and kubectl apply -k to every node installed and labelled: %.1fs", e.installTook.Seconds())
	if _, err := w.kubectl("get", "nodes", "-L", "podsnapshot.gke.io/ready"); err != nil {
		return err
	}
	if _, err := w.kubectl("-n", "podsnapshot-system", "get", "pods", "-o", "wide"); err != nil {
		return err
	}
	if _, err := w.kubectl("-n", "podsnapshot-system", "logs", "daemonset/podsnapshot-agent", "-c", "install", "--tail=1"); err != nil {
		return err
	}
	if _, err := w.kubectl("get", "runtimeclass"); err != nil {
		return err
	}
	_, err := w.kubectl("api-resources", "--api-group=podsnapshot.gke.io")
	return err
}

// command prints "$ NAME ARGS" and runs it, printing its output; a non-zero exit is an
// error.
func (w *walk) command(name string, args ...string) error {
	fmt.Printf("$ %s %s\n", name, shellQuote(args))
	cmd := exec.CommandContext(w.ctx, name, args...)
	out, err := cmd.CombinedOutput()
	fmt.Print(string(out))
	if err != nil {
		return fmt.Errorf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return nil
}

// 2. The guide's storage config (its bucket, in fake-gcs-server) and policy.
func (w *walk) policy() error {
	section("2. The guide's PodSnapshotStorageConfig and PodSnapshotPolicy")
	storage := fmt.Sprintf(`apiVersion: podsnapshot.gke.io/v1alpha1
kind: PodSnapshotStorageConfig
metadata:
  name: %s
spec:
  snapshotStorageConfig:
    gcs:
      bucket: %q
      path: "my-folder"
`, storageConfigName, bucket)
	policy := fmt.Sprintf(`apiVersion: podsnapshot.gke.io/v1alpha1
kind: PodSnapshotPolicy
metadata:
  name: %s
  namespace: %s
spec:
  storageConfigName: %s
  selector:
    matchLabels:
      app: my-app
  triggerConfig:
    type: workload
    postCheckpoint: resume
`, policyName, namespace, storageConfigName)
	sPath, err := w.writeManifest("storage-config.yaml", storage)
	if err != nil {
		return err
	}
	pPath, err := w.writeManifest("policy.yaml", policy)
	if err != nil {
		return err
	}
	begin := time.Now()
	if _, err := w.kubectl("apply", "-f", sPath, "-f", pPath); err != nil {
		return err
	}
	for _, n := range w.e.kube.Nodes {
		mirror := filepath.Join(n.NodeDir("/etc/podsnapshot"), agent.NamespaceFile(namespace))
		if err := w.waitFor("policy in "+n.Name+"'s policy_dir", 30*time.Second, 50*time.Millisecond, func() bool {
			b, _ := os.ReadFile(mirror)
			return bytes.Contains(b, []byte(policyName))
		}); err != nil {
			return err
		}
	}
	w.res.policyToNode = time.Since(begin)
	note("the agents mirrored the policy into every node's policy_dir (/etc/podsnapshot) %.2fs after kubectl apply", w.res.policyToNode.Seconds())
	_, err = w.kubectl("get", "podsnapshotstorageconfigs,podsnapshotpolicies", "-A")
	return err
}

// resultPrefix starts the line the guide's script prints with the checkpoint's result.
const resultPrefix = "GKE Pod Snapshot: "

// counterScript is the guide's script (testenv.GuideCounterScript), its trigger moved to
// count triggerAt (-trigger-at; the guide's own is 20, the default).
func counterScript(triggerAt int) string {
	return strings.Replace(testenv.GuideCounterScript, "(i == 20)", fmt.Sprintf("(i == %d)", triggerAt), 1)
}

// podManifest is the counter pod pinned to node (spec.nodeName: the demo chooses where
// the snapshot is taken and where it is restored).
func (w *walk) podManifest(node string) string {
	var script strings.Builder
	for _, l := range strings.Split(strings.TrimRight(counterScript(w.triggerAt), "\n"), "\n") {
		script.WriteString(strings.TrimRight("      "+l, " ") + "\n")
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  labels:
    app: my-app
spec:
  nodeName: %s
  runtimeClassName: gvisor
  terminationGracePeriodSeconds: 1
  containers:
  - name: my-container
    image: %s
    imagePullPolicy: Never  # the demo imported it into every node's containerd
    command: ["python3", "-c"]
    args:
    - |
%s`, podName, namespace, node, ociarchive.PythonImage, script.String())
}

// logLine is one line of `kubectl logs --timestamps`.
type logLine struct {
	at   time.Time
	text string
}

// logs returns the pod's log lines with their CRI timestamps (taken by containerd as
// the line arrived).
func (w *walk) logs() []logLine {
	out, err := w.quiet("logs", "--timestamps", podName)
	if err != nil {
		return nil
	}
	var lines []logLine
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		ts, text, ok := strings.Cut(l, " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		if ok && err == nil {
			lines = append(lines, logLine{at, text})
		}
	}
	return lines
}

// waitLog waits until a line of the pod's log matches and returns it.
func (w *walk) waitLog(what string, timeout time.Duration, match func(string) bool) (logLine, error) {
	var found logLine
	err := w.waitFor(what+" in the pod's log", timeout, 200*time.Millisecond, func() bool {
		for _, l := range w.logs() {
			if match(l.text) {
				found = l
				return true
			}
		}
		return false
	})
	return found, err
}

// watchSnapshots runs `kubectl get podsnapshots -w` and prints its lines as they
// come; the channel gets the arrival time of each line naming AllSnapshotsAvailable.
func (w *walk) watchSnapshots(ctx context.Context, since func() time.Time) (<-chan time.Time, func(), error) {
	args := []string{"get", "podsnapshots", "-n", namespace, "-w"}
	fmt.Printf("$ kubectl %s &\n", strings.Join(args, " "))
	cmd := kubectlCmd(ctx, w.e.kubeconfig, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	avail := make(chan time.Time, 4)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			now := time.Now()
			if strings.HasPrefix(sc.Text(), "NAME ") {
				fmt.Println(sc.Text())
			} else {
				fmt.Printf("%s    [watch: +%.1fs after kubectl apply]\n", sc.Text(), now.Sub(since()).Seconds())
			}
			if strings.Contains(sc.Text(), "AllSnapshotsAvailable") {
				avail <- now
			}
		}
	}()
	stop := func() {
		if cmd.Process != nil {
			cmd.Process.Kill()
		}
		<-done
		cmd.Wait()
	}
	return avail, stop, nil
}

var uuidRE = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)

// 3 and 4. The counter pod runs cold, checkpoints itself at triggerAt and goes on; its
// PodSnapshot becomes AllSnapshotsAvailable.
func (w *walk) coldPod() error {
	section(fmt.Sprintf("3. The guide's counter pod (its script as the guide writes it; it triggers its checkpoint at count %d)", w.triggerAt))
	manifest, err := w.writeManifest("counter.yaml", w.podManifest(w.e.kube.Nodes[0].Name))
	if err != nil {
		return err
	}
	watchCtx, cancelWatch := context.WithCancel(w.ctx)
	defer cancelWatch()
	var applied time.Time
	avail, stopWatch, err := w.watchSnapshots(watchCtx, func() time.Time { return applied })
	if err != nil {
		return err
	}
	defer stopWatch()
	applied = time.Now()
	if _, err := w.kubectl("apply", "-f", manifest); err != nil {
		return err
	}
	if _, err := w.kubectl("wait", "--for=condition=Ready", "pod/"+podName, "--timeout=120s"); err != nil {
		return err
	}
	w.res.coldReady = time.Since(applied)
	first, err := w.waitLog("a first line", time.Minute, func(string) bool { return true })
	if err != nil {
		return err
	}
	w.res.coldFirst = first.at.Sub(applied)
	note("cold start: Ready %.2fs, first log line (%q) %.2fs after kubectl apply", w.res.coldReady.Seconds(), first.text, w.res.coldFirst.Seconds())
	section("4. The checkpoint: kubectl get podsnapshots goes AwaitingCheckpoint -> AllSnapshotsAvailable")
	trigger, err := w.waitLog("the trigger", time.Minute, func(s string) bool { return s == fmt.Sprintf("Count: %d", w.triggerAt) })
	if err != nil {
		return err
	}
	w.res.coldSaved = trigger.at.Sub(applied)

	var availAt time.Time
	select {
	case availAt = <-avail:
	case <-time.After(3 * time.Minute):
		return fmt.Errorf("no PodSnapshot AllSnapshotsAvailable within 3 minutes of the trigger")
	case <-w.ctx.Done():
		return context.Cause(w.ctx)
	}
	stopWatch()
	w.res.triggerToAvailable = availAt.Sub(trigger.at)
	note("trigger (the pod printed %q) -> AllSnapshotsAvailable: %.2fs", trigger.text, w.res.triggerToAvailable.Seconds())
	result, err := w.waitLog("the checkpoint result", time.Minute, func(s string) bool { return strings.HasPrefix(s, resultPrefix) })
	if err != nil {
		return err
	}
	if w.res.coldResult = result.text; result.text != resultPrefix+"resume" {
		return fmt.Errorf("the pod printed %q, want %sresume", result.text, resultPrefix)
	}
	table, err := w.kubectl("get", "podsnapshots")
	if err != nil {
		return err
	}
	if w.res.snapshot = uuidRE.FindString(table); w.res.snapshot == "" {
		return fmt.Errorf("no PodSnapshot listed")
	}
	if err := w.events("Successfully checkpointed"); err != nil {
		return err
	}
	if _, err := w.kubectl("get", "podsnapshots", w.res.snapshot, "-o", "jsonpath={.status.storagePath}{\"\\n\"}"); err != nil {
		return err
	}
	if _, err := w.waitLog("counting after the checkpoint", time.Minute, func(s string) bool { return s == fmt.Sprintf("Count: %d", w.triggerAt+2) }); err != nil {
		return err
	}
	_, err = w.kubectl("logs", podName)
	return err
}

// events waits until a GKEPodSnapshotting event's message contains want, then prints
// them all.
func (w *walk) events(want string) error {
	selector := "reason=" + eventReason
	if err := w.waitFor("event "+want, time.Minute, 250*time.Millisecond, func() bool {
		out, _ := w.quiet("get", "events", "--field-selector", selector, "-o", "jsonpath={.items[*].message}")
		return strings.Contains(out, want)
	}); err != nil {
		return err
	}
	_, err := w.kubectl("get", "events", "--field-selector", selector)
	return err
}

// 5. Delete the pod and apply it again: restored from the snapshot.
func (w *walk) restoredPod() error {
	nodes := w.e.kube.Nodes
	on := nodes[len(nodes)-1]
	manifest := filepath.Join("manifests", "counter.yaml")
	if len(nodes) == 1 {
		section("5. Delete the pod and apply it again: it is restored from the snapshot")
	} else {
		section(fmt.Sprintf("5. Delete the pod and apply it again on %s: it is restored there, from the bucket", on.Name))
		var err error
		if manifest, err = w.writeManifest("counter-"+on.Name+".yaml", w.podManifest(on.Name)); err != nil {
			return err
		}
		cache, _ := os.ReadDir(filepath.Join(on.NodeDir("/var/lib/podsnapshot"), "cache"))
		note("%s's node cache holds %d entries: the restore reads the snapshot from the bucket", on.Name, len(cache))
	}
	if _, err := w.kubectl("delete", "pod", podName, "--wait=true", "--timeout=60s"); err != nil {
		return err
	}
	applied := time.Now()
	if _, err := w.kubectl("apply", "-f", manifest); err != nil {
		return err
	}
	if _, err := w.kubectl("wait", "--for=condition=Ready", "pod/"+podName, "--timeout=120s"); err != nil {
		return err
	}
	w.res.restoreReady = time.Since(applied)
	first, err := w.waitLog("a first line", time.Minute, func(string) bool { return true })
	if err != nil {
		return err
	}
	w.res.restoreFirst = first.at.Sub(applied)
	note("restore: Ready %.2fs, first log line (%q) %.2fs after kubectl apply", w.res.restoreReady.Seconds(), first.text, w.res.restoreFirst.Seconds())
	result, err := w.waitLog("the checkpoint result", time.Minute, func(s string) bool { return strings.HasPrefix(s, resultPrefix) })
	if err != nil {
		return err
	}
	if w.res.restoredResult = result.text; result.text != resultPrefix+"restore" {
		return fmt.Errorf("the pod applied again printed %q: it started cold (want %srestore)", result.text, resultPrefix)
	}
	want := fmt.Sprintf("Count: %d", w.triggerAt+2)
	if _, err := w.waitLog("counting on from the saved count", time.Minute, func(s string) bool { return s == want }); err != nil {
		return err
	}
	for _, l := range w.logs() {
		if l.text == "Count: 0" {
			return fmt.Errorf("the restored pod counted from 0 again")
		}
	}
	if _, err := w.kubectl("logs", podName); err != nil {
		return err
	}
	note("the restored copy on %s goes on from count %d, where the snapshot was taken on %s; it never printed Count: 0", on.Name, w.triggerAt, nodes[0].Name)
	if err := w.events("Successfully restored"); err != nil {
		return err
	}
	cond := `jsonpath={.status.conditions[?(@.type=="PodRestored")]}{"\n"}`
	if err := w.waitFor("PodRestored condition", time.Minute, 250*time.Millisecond, func() bool {
		out, _ := w.quiet("get", "pod", podName, "-o", `jsonpath={.status.conditions[?(@.type=="PodRestored")].status}`)
		return out == "True"
	}); err != nil {
		return err
	}
	if _, err := w.kubectl("get", "pod", podName, "-o", cond); err != nil {
		return err
	}
	if err := w.waitFor("lastAccessTime", time.Minute, 250*time.Millisecond, func() bool {
		out, _ := w.quiet("get", "podsnapshots", w.res.snapshot, "-o", "jsonpath={.status.lastAccessTime}")
		return out != ""
	}); err != nil {
		return err
	}
	if _, err := w.kubectl("get", "podsnapshots"); err != nil {
		return err
	}
	_, err = w.kubectl("get", "podsnapshots", "-o",
		"custom-columns=NAME:.metadata.name,STATUS:.status.conditions[?(@.type==\"Ready\")].reason,SOURCE:.status.sourcePod,NODE:.status.nodeName,LAST-ACCESS:.status.lastAccessTime")
	return err
}

// print writes the timings.
func (r results) print(e *env, total time.Duration) {
	secs := func(d time.Duration) string { return fmt.Sprintf("%6.2f s", d.Seconds()) }
	row := func(name, value, note string) { fmt.Printf("  %-36s %s  %s\n", name, value, note) }
	fmt.Printf("\n### Timings (%s)\n\n", machine())
	row("cluster start", secs(e.setupTook+e.kubeTook), fmt.Sprintf("images %.1f s; Kubernetes, %d node(s) %.1f s",
		e.setupTook.Seconds(), e.nodes, e.kubeTook.Seconds()))
	row("install: make push -> nodes ready", secs(e.installTook), "kubectl apply -k; the DaemonSet installs and labels every node")
	row("policy: apply -> on the node", secs(r.policyToNode), "the agent's mirror in policy_dir")
	row("cold: apply -> Ready", secs(r.coldReady), "")
	row("cold: apply -> first line", secs(r.coldFirst), `"Count: 0"`)
	row(fmt.Sprintf("cold: apply -> Count: %d", r.triggerAt), secs(r.coldSaved), "the state the snapshot holds (the trigger)")
	row("trigger -> AllSnapshotsAvailable", secs(r.triggerToAvailable), "checkpoint, store, PodSnapshot status (kubectl get -w)")
	row("restore: apply -> Ready", secs(r.restoreReady), "")
	row("restore: apply -> first line", secs(r.restoreFirst), fmt.Sprintf("%q, then Count: %d", r.restoredResult, r.triggerAt+1))
	x := func(a, b time.Duration) string { return fmt.Sprintf("%5.1fx  ", a.Seconds()/b.Seconds()) }
	row("speed-up: apply -> Ready", x(r.coldReady, r.restoreReady), "cold / restored")
	row("speed-up: apply -> first line", x(r.coldFirst, r.restoreFirst), "cold / restored")
	row(fmt.Sprintf("speed-up: apply -> Count: %d", r.triggerAt), x(r.coldSaved, r.restoreFirst), "cold / restored (first line)")
	fmt.Printf("\n  snapshot %s; the whole demo took %.1f s\n", r.snapshot, total.Seconds())
}

// shellQuote joins args as a shell would need them typed.
func shellQuote(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n\"'`$\\{}[]?*&;|<>()!#~") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}
