"""torchserve WEIGHTS LAYERS DIM PORT [--warmup=eager|script]: a PyTorch model server that
snapshots itself.

The image of internal/testenv/ociarchive (TorchImage) carries Debian's python3-torch (CPU)
and WEIGHTS, a file of float32 values (little-endian) written deterministically when the
image is built: for each of LAYERS layers a DIM x DIM weight matrix (row-major, out x in,
as nn.Linear keeps it) and then DIM biases. With the image's 16 layers of 4096 that is
1 GiB of weights.

The program imports torch, reads the whole file into one tensor in memory, builds an
nn.Sequential of Linear layers (ReLU between them) whose parameters are views of it, and
runs a warm-up inference on a fixed input, printing

    warmup sum=S first=A,B,C,D sha256=H infer_ms=T

(the digest of the output: its sum, its first four values and the SHA-256 of its bytes).
It then serves on 127.0.0.1:PORT (GET /infer answers the digest of a fresh inference of
the same input; GET /healthz answers "ok"), prints

    ready layers=L dim=D params=P weights_mib=M import_s=.. load_s=.. warmup_s=.. rss_mib=R port=PORT

and checkpoints its own sandbox: it writes "1" to /proc/gvisor/checkpoint and reads the
result from the SAME open file (gVisor decides at open which checkpoint a file waits
for), printing "checkpoint result: resume|restore|error". It serves on afterwards; a
restored copy serves from the restored model and never loads the weights again.

The answer of /infer is two lines:

    sum=S first=A,B,C,D sha256=H
    request=N warmup_match=yes|no infer_ms=T

and each request is logged as "served request=N sum=... infer_ms=T". Output is line
buffered.

--warmup=script (ociarchive.TorchCompiled) serves the model compiled, after the warm-up
a real inference server does before it takes requests. vLLM compiles its model with
torch.compile and captures a CUDA graph per batch size it serves (1, 2, 4, 8, 16, 24, ...
by default).
Debian 12's python3-torch is 1.13 (torch.__version__ 1.13.0a0, no torch.compile):
torch.compile (TorchDynamo and Inductor) arrived in torch 2.0 (March 2023). The nearest
real warm-up in 1.13 is TorchScript as TorchServe and Triton's PyTorch backend use it:
compile_model traces the model, freezes it, runs optimize_for_inference and then runs
WARMUP_RUNS inferences at each of WARMUP_BATCHES. After loading the weights it prints

    compile step=trace_freeze_optimize s=..
    compile step=warmup batch=B runs_ms=A,B,C       (one line per batch size)

frees the loaded weights (release_weights: the compiled model holds its own copy), and
then does the same warm-up inference with the compiled model; the ready line ends with
"compile_s=.. released_mib=..". /infer answers from the compiled model, so a restored
server compares the compiled model's output with the compiled model's warm-up.

Why WARMUP_BATCHES is 1, 2, 4, ..., 64 (warmup_bench.py and this server measured it with
Debian's torch at its default of 1 thread on the 2-core development host, shared, so the
figures are indicative): trace, freeze and optimize_for_inference take 4 to 10 s
(freezing folds the 1 GiB of parameters into the graph; optimize_for_inference writes a
transposed copy of every weight); one inference takes about 0.1, 0.2, 0.4, 0.8-1, 1.5-2.4,
3-4 and 6-8.5 s at batch 1 to 64 (the arithmetic grows with the batch; batch 1 is bound by
reading the weights). With 3 runs each the compile took 51 to 69 s (the server's whole
cold start to its first inference 75 s, the eager server's 9 s), of the order of vLLM's
own start-up: its logs give tens of seconds for torch.compile with an empty cache plus
seconds to tens of seconds for graph capture. Larger batches would make the cold start
minutes on this CPU; stopping at 32 would halve it. The outputs of the compiled model
equal the eager model's and each other across runs (the restore compares digests); its
first inference after the warm-up costs what later ones do (0.1-0.2 s at batch 1), and
that is what a restore starts from: the snapshot carries the compiled, warmed-up model,
and as the loaded weights are freed it is as large as the eager server's (about 1.3 GiB
resident).
"""

import hashlib
import http.server
import os
import sys
import threading
import time

CHECKPOINT_FILE = "/proc/gvisor/checkpoint"

start = time.monotonic()
import torch  # noqa: E402  (timed: importing torch is part of the cold start)
import torch.nn as nn  # noqa: E402

import_s = time.monotonic() - start


def load_weights(path, count):
    """Reads count float32 values of path into a new tensor (private memory, not a
    mapping of the file)."""
    flat = torch.empty(count, dtype=torch.float32)
    view = memoryview(flat.numpy()).cast("B")
    size = os.path.getsize(path)
    if size != len(view):
        raise SystemExit("%s holds %d bytes, want %d" % (path, size, len(view)))
    with open(path, "rb", buffering=0) as f:
        done = 0
        while done < len(view):
            n = f.readinto(view[done:done + (64 << 20)])
            if not n:
                raise SystemExit("%s: short read at %d of %d" % (path, done, len(view)))
            done += n
    return flat


def build_model(flat, layers, dim):
    mods = []
    off = 0
    for i in range(layers):
        # skip_init: no random initialisation of parameters that are replaced at once.
        lin = nn.utils.skip_init(nn.Linear, dim, dim)
        w = flat[off:off + dim * dim].view(dim, dim)
        off += dim * dim
        b = flat[off:off + dim]
        off += dim
        lin.weight = nn.Parameter(w, requires_grad=False)
        lin.bias = nn.Parameter(b, requires_grad=False)
        mods.append(lin)
        if i < layers - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods).eval()


# The batch sizes the --warmup=script server warms up for, and the runs of each: the
# profiling executor profiles the first run and optimises from the second; the module's
# docstring says why these sizes.
WARMUP_BATCHES = (1, 2, 4, 8, 16, 32, 64)
WARMUP_RUNS = 3


def batch_input(x, b):
    """The warm-up input of batch size b: b copies of x (1 x dim), contiguous as a
    request batch would be."""
    return x.expand(b, x.shape[1]).contiguous()


def compile_model(model, x, batches=WARMUP_BATCHES, runs=WARMUP_RUNS, log=None):
    """Returns model compiled to TorchScript for inference as TorchServe and Triton's
    PyTorch backend serve it: traced on x, frozen (parameters folded into the graph as
    constants) and passed through optimize_for_inference (with Debian's CPU build, which
    has no MKL, each Linear becomes a matmul by a transposed copy of its weight made
    here, plus the bias). Then it runs runs inferences at each batch size of batches,
    under inference_mode like Server.infer: the profiling executor profiles the first
    run of the graph and runs its optimised plan from the next, and the first run at a
    new shape costs somewhat more (0.16 s against 0.1 s at batch 1, once, on the
    development host), which a server that skipped the warm-up would pay on its first requests. log,
    when given, gets one line per step with its time. model's biases are replaced by
    copies (see below)."""
    log = log or (lambda s: None)
    t = time.monotonic()
    for mod in model:
        if isinstance(mod, nn.Linear):
            # The optimised graph keeps each bias tensor itself as a constant: biases of
            # their own (64 KiB in all) let release_weights free the file's tensor.
            mod.bias = nn.Parameter(mod.bias.clone(), requires_grad=False)
    traced = torch.jit.trace(model, x, check_trace=False)
    frozen = torch.jit.freeze(traced)
    opt = torch.jit.optimize_for_inference(frozen)
    # optimize_for_inference turns each Linear into a matmul by a transposed copy of its
    # weight and leaves the original weight as a dead constant of the graph: drop it.
    torch._C._jit_pass_dce(opt.graph)
    log("compile step=trace_freeze_optimize s=%.2f" % (time.monotonic() - t))
    for b in batches:
        xb = batch_input(x, b)
        ms = []
        for _ in range(runs):
            t = time.monotonic()
            with torch.inference_mode():
                opt(xb)
            ms.append((time.monotonic() - t) * 1000)
        log("compile step=warmup batch=%d runs_ms=%s" % (b, ",".join("%.0f" % m for m in ms)))
    return opt


def release_weights(flat, graph):
    """Frees the memory of flat (the weights file's tensor) once graph, the compiled
    model's, holds none of it, and returns the MiB freed (0 if the graph still uses it).

    A real server keeps one copy of its weights; the compiled model holds its own
    (transposed) copies. Dropping every Python reference to the eager and the frozen
    modules does not free flat with torch 1.13 (measured: the resident memory stays;
    TorchScript keeps the frozen graphs' original constants alive), so the 1 GiB would
    stay and double the snapshot. Resizing the storage to 0 frees it under those stale
    references, which nothing runs any more (checked here: no constant of graph, the
    one served, lies in its memory)."""
    storage = flat.storage()
    lo, hi = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
    for n in graph.nodes():
        if n.kind() == "prim::Constant" and n.hasAttribute("value") and n.kindOf("value") == "t":
            p = n.t("value").data_ptr()
            if lo <= p < hi:
                return 0
    mib = storage.nbytes() >> 20
    storage.resize_(0)
    return mib


def digest(out):
    vals = out.flatten()
    first = ",".join("%.6f" % v for v in vals[:4].tolist())
    h = hashlib.sha256(vals.contiguous().numpy().tobytes()).hexdigest()[:32]
    return "sum=%.6f first=%s sha256=%s" % (vals.double().sum().item(), first, h)


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return -1


def trigger_checkpoint():
    try:
        # r+b without buffering: the write and the read go straight to one descriptor.
        with open(CHECKPOINT_FILE, "r+b", buffering=0) as f:
            f.write(b"1")
            return f.read(64).decode().strip() or "error"
    except OSError as e:
        print("checkpoint failed: %s" % e)
        return "error"


class Server:
    def __init__(self, model, x, warmup):
        self.model, self.x, self.warmup = model, x, warmup
        self.lock = threading.Lock()
        self.requests = 0

    def infer(self):
        with self.lock:
            t = time.monotonic()
            with torch.inference_mode():
                out = self.model(self.x)
            ms = (time.monotonic() - t) * 1000
            self.requests += 1
            return digest(out), self.requests, ms


def handler(server):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/healthz":
                return self.reply(b"ok\n")
            if self.path != "/infer":
                self.send_error(404)
                return
            d, n, ms = server.infer()
            match = "yes" if d == server.warmup else "no"
            print("served request=%d %s warmup_match=%s infer_ms=%.1f" % (n, d, match, ms))
            self.reply(("%s\nrequest=%d warmup_match=%s infer_ms=%.1f\n" % (d, n, match, ms)).encode())

        do_POST = do_GET

        def reply(self, body):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def parse_args(argv):
    """Returns (path, layers, dim, port, warmup) of argv (without the program name):
    four positional arguments and an optional --warmup=eager|script."""
    warmup = "eager"
    pos = []
    for a in argv:
        if a.startswith("--warmup="):
            warmup = a[len("--warmup="):]
            if warmup not in ("eager", "script"):
                raise SystemExit("--warmup=%s: want eager or script" % warmup)
        else:
            pos.append(a)
    if len(pos) != 4:
        raise SystemExit("usage: torchserve.py WEIGHTS LAYERS DIM PORT [--warmup=eager|script]")
    return pos[0], int(pos[1]), int(pos[2]), int(pos[3]), warmup


def main():
    sys.stdout.reconfigure(line_buffering=True)
    path, layers, dim, port, mode = parse_args(sys.argv[1:])
    torch.set_grad_enabled(False)

    t = time.monotonic()
    flat = load_weights(path, layers * (dim * dim + dim))
    model = build_model(flat, layers, dim)
    load_s = time.monotonic() - t

    # The fixed input of every inference.
    x = torch.linspace(-1.0, 1.0, dim, dtype=torch.float32).reshape(1, dim)
    compiled = ""
    params = flat.numel()
    if mode == "script":
        t = time.monotonic()
        # Compile a model of a copy of the weights: load_weights's tensor lent its memory
        # to numpy, which makes its storage fixed, so release_weights could not free it.
        # The eager model and that tensor go as the names are rebound.
        flat = flat.clone()
        model = compile_model(build_model(flat, layers, dim), x, log=print)
        compile_s = time.monotonic() - t
        compiled = " compile_s=%.2f released_mib=%d" % (compile_s, release_weights(flat, model.graph))
    t = time.monotonic()
    with torch.inference_mode():
        out = model(x)
    warmup_s = time.monotonic() - t
    warm = digest(out)
    print("warmup %s infer_ms=%.1f" % (warm, warmup_s * 1000))

    server = Server(model, x, warm)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler(server))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("ready layers=%d dim=%d params=%d weights_mib=%d import_s=%.2f load_s=%.2f warmup_s=%.2f rss_mib=%d port=%d threads=%d%s"
          % (layers, dim, params, params * 4 >> 20, import_s, load_s, warmup_s,
             rss_mib(), port, torch.get_num_threads(), compiled))

    print("checkpoint result: %s" % trigger_checkpoint())
    threading.Event().wait()


if __name__ == "__main__":
    main()
