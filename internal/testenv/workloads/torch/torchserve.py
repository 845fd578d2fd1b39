"""torchserve WEIGHTS LAYERS DIM PORT: a PyTorch model server that snapshots itself.

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


def main():
    sys.stdout.reconfigure(line_buffering=True)
    path, layers, dim, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_grad_enabled(False)

    t = time.monotonic()
    flat = load_weights(path, layers * (dim * dim + dim))
    model = build_model(flat, layers, dim)
    load_s = time.monotonic() - t

    # The fixed input of every inference.
    x = torch.linspace(-1.0, 1.0, dim, dtype=torch.float32).reshape(1, dim)
    t = time.monotonic()
    with torch.inference_mode():
        out = model(x)
    warmup_s = time.monotonic() - t
    warm = digest(out)
    print("warmup %s infer_ms=%.1f" % (warm, warmup_s * 1000))

    server = Server(model, x, warm)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler(server))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("ready layers=%d dim=%d params=%d weights_mib=%d import_s=%.2f load_s=%.2f warmup_s=%.2f rss_mib=%d port=%d threads=%d"
          % (layers, dim, flat.numel(), flat.numel() * 4 >> 20, import_s, load_s, warmup_s,
             rss_mib(), port, torch.get_num_threads()))

    print("checkpoint result: %s" % trigger_checkpoint())
    threading.Event().wait()


if __name__ == "__main__":
    main()
