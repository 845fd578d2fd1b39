"""warmup_bench.py [LAYERS DIM [BATCHES]]: times torchserve.py's --warmup=script on the host.

Run with Debian's /usr/bin/python3 (python3-torch) from this directory. It builds
torchserve's model (default 16 Linear layers of 4096, as TorchImage) from random weights
of the image's scale instead of reading the image's 1 GiB file, then prints:

  - the eager model's first inference (what the default server's warm-up does);
  - each step of compile_model (trace + freeze + optimize_for_inference, then the
    warm-up runs per batch size) and its total: the compiled server's cold start cost;
  - the digests of several batch-1 inferences of the compiled model, which must all be
    equal: a restored server compares its answer with the warm-up's digest;
  - the first batch-1 inferences of a second compiled model that was NOT warmed up, to
    show what warm-up moves out of the first requests, and the first inference of the
    warmed-up model afterwards, which is what a restore from a snapshot starts with;
  - the resident memory after each phase.

BATCHES is a comma-separated list of batch sizes (default torchserve.WARMUP_BATCHES).
The numbers depend on the host's cores and its other load; they are indicative.
"""

import sys
import time

import torch

import torchserve as ts


def random_weights(layers, dim):
    """A weights tensor laid out as the image's file, of random values of its scale
    (He-uniform weights, small biases: the same activations' magnitudes, so the same
    arithmetic); the same for the same layers and dim."""
    torch.manual_seed(0)
    flat = torch.empty(layers * (dim * dim + dim), dtype=torch.float32)
    a = (6.0 / dim) ** 0.5
    off = 0
    for _ in range(layers):
        flat[off:off + dim * dim].uniform_(-a, a)
        off += dim * dim
        flat[off:off + dim].uniform_(-0.01, 0.01)
        off += dim
    return flat


def main():
    layers = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    dim = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
    batches = tuple(int(b) for b in sys.argv[3].split(",")) if len(sys.argv) > 3 else ts.WARMUP_BATCHES
    torch.set_grad_enabled(False)
    print("torch %s threads=%d layers=%d dim=%d batches=%s runs=%d"
          % (torch.__version__, torch.get_num_threads(), layers, dim, batches, ts.WARMUP_RUNS))

    flat = random_weights(layers, dim)
    model = ts.build_model(flat, layers, dim)
    x = torch.linspace(-1.0, 1.0, dim, dtype=torch.float32).reshape(1, dim)
    print("loaded rss_mib=%d" % ts.rss_mib())

    t = time.monotonic()
    with torch.inference_mode():
        eager = ts.digest(model(x))
    print("eager first_infer_ms=%.0f %s" % ((time.monotonic() - t) * 1000, eager))

    t = time.monotonic()
    opt = ts.compile_model(model, x, batches, log=print)
    total = time.monotonic() - t
    rss = ts.rss_mib()
    print("compile total_s=%.2f rss_mib=%d released_mib=%d rss_after_release_mib=%d"
          % (total, rss, ts.release_weights(flat, opt.graph), ts.rss_mib()))

    digests = []
    for i in range(5):
        t = time.monotonic()
        with torch.inference_mode():
            digests.append(ts.digest(opt(x)))
        print("compiled infer=%d ms=%.0f %s" % (i + 1, (time.monotonic() - t) * 1000, digests[-1]))
    print("compiled deterministic=%s equals_eager=%s"
          % ("yes" if len(set(digests)) == 1 else "no", "yes" if digests[0] == eager else "no"))

    # The same compile without the warm-up runs (of a new copy of the weights: the first
    # is released): its first requests pay what warm-up paid.
    model = ts.build_model(random_weights(layers, dim), layers, dim)
    cold = ts.compile_model(model, x, batches=(), log=print)
    for i in range(3):
        t = time.monotonic()
        with torch.inference_mode():
            d = ts.digest(cold(x))
        print("unwarmed infer=%d ms=%.0f same=%s" % (i + 1, (time.monotonic() - t) * 1000, "yes" if d == digests[0] else "no"))
    t = time.monotonic()
    with torch.inference_mode():
        d = ts.digest(opt(ts.batch_input(x, batches[-1] if batches else 1)))
    print("warmed batch=%d infer_ms=%.0f" % (batches[-1] if batches else 1, (time.monotonic() - t) * 1000))
    print("done rss_mib=%d" % ts.rss_mib())


if __name__ == "__main__":
    main()
