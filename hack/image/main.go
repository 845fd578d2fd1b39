// Command image builds podsnapshot's one OCI image and writes it as an archive, pushes it
// to a registry, or both (`make image`, `make push`):
//
//	go run ./hack/image -bin _out/bin -runsc _deps/bin/runsc -o _out/podsnapshot.tar
//	go run ./hack/image -bin _out/bin -runsc _deps/bin/runsc \
//	    -push 127.0.0.1:5000/podsnapshot:v1 -kustomization deploy/kubernetes/kustomization.yaml
//
// The image holds, in /opt/podsnapshot/bin, the shim (containerd-shim-podsnapshot-v1 and
// the serving shim it starts, podsnapshot-shimd), runsc, the CLI (podsnapshot) and
// podsnapshot-agent, its entrypoint. The agent DaemonSet runs it twice per node: as the
// init container that installs the first four
// on the node (--role=install) and as the node agent; the controller Deployment runs it
// with --role=controller. Every file's time is the Unix epoch and the layer is built in
// a fixed order, so the same binaries give the same digest.
//
// Images are built and pushed with go-containerregistry (the library behind crane):
// -push writes the image to the registry with the credentials of the Docker config
// (~/.docker/config.json, as `crane auth login` writes it); -insecure speaks plain HTTP
// to it. -kustomization then points the `images:` entry named "podsnapshot" of each
// kustomization file named at the pushed image, as `kustomize edit set image` would, keeping
// the file's comments.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// BinDir is where the image keeps its binaries.
const BinDir = "/opt/podsnapshot/bin"

// KustomizeName is the image name the manifests of deploy/kubernetes use; their
// kustomization's `images:` entry maps it to the real reference.
const KustomizeName = "podsnapshot"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		binDir        = flag.String("bin", "_out/bin", "directory with containerd-shim-podsnapshot-v1, podsnapshot-shimd, podsnapshot and podsnapshot-agent (make build)")
		runsc         = flag.String("runsc", "_deps/bin/runsc", "the runsc binary (make deps)")
		out           = flag.String("o", "", "write the image as an archive for `ctr images import` here")
		tag           = flag.String("name", "podsnapshot.local/podsnapshot:latest", "the image's name in the archive (-o)")
		push          = flag.String("push", "", "push the image to this reference (REGISTRY/PATH:TAG)")
		insecure      = flag.Bool("insecure", false, "-push over plain HTTP")
		kustomization = flag.String("kustomization", "", "after -push, set the images: entry \"podsnapshot\" of these kustomization.yaml files (comma-separated) to the pushed image")
		version       = flag.String("version", "dev", "org.opencontainers.image.version label")
	)
	flag.Parse()
	if *out == "" && *push == "" {
		return errors.New("nothing to do: give -o, -push or both")
	}
	if *kustomization != "" && *push == "" {
		return errors.New("-kustomization needs -push")
	}
	files := map[string]string{
		"containerd-shim-podsnapshot-v1": filepath.Join(*binDir, "containerd-shim-podsnapshot-v1"),
		"podsnapshot-shimd":              filepath.Join(*binDir, "podsnapshot-shimd"),
		"podsnapshot":                    filepath.Join(*binDir, "podsnapshot"),
		"podsnapshot-agent":              filepath.Join(*binDir, "podsnapshot-agent"),
		"runsc":                          *runsc,
	}
	img, err := build(files, *version)
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	if *out != "" {
		ref, err := name.NewTag(*tag)
		if err != nil {
			return fmt.Errorf("-name %q: %w", *tag, err)
		}
		if err := tarball.WriteToFile(*out, ref, img); err != nil {
			return fmt.Errorf("write %s: %w", *out, err)
		}
		fmt.Printf("wrote %s (%s, %s)\n", *out, ref, digest)
	}
	if *push == "" {
		return nil
	}
	var opts []name.Option
	if *insecure {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(*push, opts...)
	if err != nil {
		return fmt.Errorf("-push %q: %w", *push, err)
	}
	start := time.Now()
	if err := remote.Write(ref, img, remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	fmt.Printf("pushed %s@%s in %.1fs\n", ref, digest, time.Since(start).Seconds())
	if _, ok := ref.(name.Tag); !ok && *kustomization != "" {
		return fmt.Errorf("-kustomization: -push %s is not a tag", ref)
	}
	for _, k := range strings.Split(*kustomization, ",") {
		if k == "" {
			continue
		}
		if err := setImage(k, ref.Context().Name(), ref.Identifier()); err != nil {
			return err
		}
		fmt.Printf("%s: image %s is now %s:%s\n", k, KustomizeName, ref.Context().Name(), ref.Identifier())
	}
	return nil
}

// build returns the image: one layer with the binaries (mode 0755, owner root) in
// BinDir, entrypoint podsnapshot-agent, for this machine's OS and architecture.
func build(files map[string]string, version string) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"opt/", "opt/podsnapshot/", "opt/podsnapshot/bin/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
	}
	for _, base := range []string{"containerd-shim-podsnapshot-v1", "podsnapshot-shimd", "podsnapshot", "podsnapshot-agent", "runsc"} {
		b, err := os.ReadFile(files[base])
		if err != nil {
			return nil, fmt.Errorf("%s: %w (make build deps)", base, err)
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(BinDir, "/") + "/" + base, Mode: 0o755,
			Size: int64(len(b)), ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	})
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: time.Unix(0, 0)}
	cf.Config.Entrypoint = []string{BinDir + "/podsnapshot-agent"}
	cf.Config.Env = []string{"PATH=" + BinDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":   "podsnapshot",
		"org.opencontainers.image.version": version,
	}
	return mutate.ConfigFile(img, cf)
}

// imagesEntry matches the `- name: podsnapshot` item of a kustomization's images: list
// with its newName and newTag lines, in that order.
var imagesEntry = regexp.MustCompile(`(?m)^(- name: ` + KustomizeName + `\n\s+newName: )\S+(\n\s+newTag: )\S+$`)

// setImage rewrites the newName and newTag of the "podsnapshot" images: entry of the
// kustomization file at path. The file must have the entry in that shape (name, newName,
// newTag on consecutive lines); otherwise it is an error naming the file, and the file is
// left as it was.
func setImage(path, newName, newTag string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("-kustomization: %w", err)
	}
	if !imagesEntry.Match(b) {
		return fmt.Errorf("%s: no images: entry \"- name: %s\" followed by newName: and newTag: lines", path, KustomizeName)
	}
	b = imagesEntry.ReplaceAll(b, []byte("${1}"+newName+"${2}"+newTag))
	return os.WriteFile(path, b, 0o644)
}
