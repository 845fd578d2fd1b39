package ociarchive

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"
	"slices"
	"testing"
)

// TestTorchWeights: the weights are a function of the seed only (parallel generation
// included), laid out as weight matrix then biases per layer, within their ranges, and
// unchanged from what the images were built with (a changed generator changes
// TorchImage's digest and so every snapshot key of it).
func TestTorchWeights(t *testing.T) {
	const layers, dim = 3, 600 // 600*600*4 bytes: several 1 MiB chunks per layer
	a, b := TorchWeights(layers, dim, torchSeed), TorchWeights(layers, dim, torchSeed)
	if len(a) != layers*(dim*dim+dim)*4 || !bytes.Equal(a, b) {
		t.Fatalf("two generations differ or have the wrong size (%d bytes)", len(a))
	}
	if bytes.Equal(a, TorchWeights(layers, dim, torchSeed+1)) {
		t.Fatal("another seed gives the same weights")
	}
	limW := math.Sqrt(6.0 / dim)
	var sum float64
	for l := range layers {
		for i := range dim*dim + dim {
			v := float64(math.Float32frombits(binary.LittleEndian.Uint32(a[(l*(dim*dim+dim)+i)*4:])))
			lim := limW
			if i >= dim*dim {
				lim = 0.01
			}
			if v < -lim || v >= lim {
				t.Fatalf("layer %d value %d = %g, want in [-%g, %g)", l, i, v, lim, lim)
			}
			if i < dim*dim {
				sum += v
			}
		}
	}
	if mean := sum / (layers * dim * dim); math.Abs(mean) > limW/100 {
		t.Fatalf("mean weight %g, want about 0", mean)
	}
	sum256 := sha256.Sum256(a)
	if got, want := hex.EncodeToString(sum256[:8]), torchWeightsGolden; got != want {
		t.Fatalf("weights changed: sha256 prefix %s, want %s", got, want)
	}
}

const torchWeightsGolden = "79ef342027c57c5a"

// TestTorchCommand: without options the command is the one the image was always built
// with (its config, and so its digest and every snapshot key of it, must not change);
// options follow the positional arguments, where torchserve.py reads them.
func TestTorchCommand(t *testing.T) {
	want := []string{"/usr/bin/python3", "/app/torchserve.py", "/model/weights.f32", "16", "4096", "8000"}
	if got := TorchCommand(); !slices.Equal(got, want) {
		t.Fatalf("TorchCommand() = %q, want %q", got, want)
	}
	if got := TorchCommand(TorchCompiled); !slices.Equal(got, append(want, "--warmup=script")) {
		t.Fatalf("TorchCommand(TorchCompiled) = %q", got)
	}
}
