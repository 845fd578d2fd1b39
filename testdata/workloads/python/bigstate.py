"""bigstate [MIB]: a Python workload that is slow to start, for snapshot tests.

It imports a large part of the standard library, builds a structure of about MIB MiB
(default 200) of dicts, tuples and strings, and prints

    ready modules=M entries=N rss_mib=R checksum=C

Then it checkpoints its own sandbox: it writes "1" to /proc/gvisor/checkpoint and reads
the result from the SAME open file (gVisor decides at open which checkpoint a file waits
for), and prints

    checkpoint result: resume|restore|error

followed by one verification ("verify ok entries=N checksum=C import=MODULE" or
"verify FAILED ..."): the structure is hashed again and compared, and a module that was
never imported before is imported. It then stays alive; every SIGUSR1 verifies again
(with another fresh import), so a restored copy can be checked from outside with
`ctr task kill -s SIGUSR1 ID`. Output is unbuffered.
"""

import importlib
import signal
import sys
import time

CHECKPOINT_FILE = "/proc/gvisor/checkpoint"

# A broad slice of the standard library, as a large application would pull in.
STARTUP_MODULES = """
abc argparse array ast asyncio base64 bisect binascii bz2 calendar cmath codecs collections
collections.abc colorsys concurrent.futures configparser contextlib contextvars copy csv
ctypes dataclasses datetime decimal difflib dis email email.mime.multipart email.mime.text
email.parser email.policy enum errno fnmatch fractions ftplib functools gc getopt gettext
glob graphlib gzip hashlib heapq hmac html html.parser http http.client http.cookies
http.server imaplib importlib.metadata importlib.resources inspect io ipaddress itertools
json keyword linecache locale logging logging.handlers lzma mailbox math mimetypes
multiprocessing numbers operator optparse os pathlib pickle pkgutil platform plistlib
poplib pprint queue quopri random re reprlib sched secrets select selectors shelve shlex
shutil signal smtplib socket socketserver sqlite3 ssl stat statistics string stringprep
struct subprocess tarfile tempfile textwrap threading timeit tokenize traceback types
typing unicodedata unittest unittest.mock urllib.error urllib.parse urllib.request uuid
warnings weakref xml.etree.ElementTree xml.sax xmlrpc.client zipfile zlib zoneinfo
""".split()

# Modules imported only after the checkpoint, one per verification: proof that imports
# (file system and code loading) still work in a restored copy.
LATER_MODULES = """
wave tomllib xml.dom.minidom cProfile pstats filecmp netrc code codeop trace tabnanny
pyclbr sndhdr chunk telnetlib nntplib mailcap aifc sunau imghdr uu xdrlib crypt
""".split()

# Bytes per entry of the structure, roughly (key string, value tuple, its string, int,
# float, and the dict slot).
ENTRY_BYTES = 420


def build(mib):
    n = mib * 1024 * 1024 // ENTRY_BYTES
    data = {}
    for i in range(n):
        data["key-%08d" % i] = (i, ("%08d" % i) * 18, i * 0.5)
    return data


def checksum(data):
    import hashlib
    h = hashlib.sha256()
    for k, (i, s, f) in data.items():
        h.update(k.encode())
        h.update(s.encode())
        h.update(b"%d:%r" % (i, f))
    return h.hexdigest()[:16]


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


class State:
    def __init__(self, data, want):
        self.data = data
        self.want = want
        self.later = list(LATER_MODULES)

    def verify(self, *_):
        got = checksum(self.data)
        mod = "none"
        while self.later:
            name = self.later.pop(0)
            if name in sys.modules:
                continue
            try:
                importlib.import_module(name)
                mod = name
            except ModuleNotFoundError:  # removed in newer Python versions
                continue
            except Exception as e:  # a broken import is a failed check
                print("verify FAILED import %s: %r" % (name, e))
                return
            break
        if got == self.want:
            print("verify ok entries=%d checksum=%s import=%s" % (len(self.data), got, mod))
        else:
            print("verify FAILED entries=%d checksum=%s want=%s" % (len(self.data), got, self.want))


def main():
    sys.stdout.reconfigure(line_buffering=True)
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    start = time.monotonic()
    for name in STARTUP_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:  # not in this Python version
            pass
    imported = time.monotonic()
    data = build(mib)
    want = checksum(data)
    print("ready modules=%d entries=%d rss_mib=%d checksum=%s import_s=%.2f build_s=%.2f"
          % (len(sys.modules), len(data), rss_mib(), want, imported - start,
             time.monotonic() - imported))
    state = State(data, want)
    result = trigger_checkpoint()
    print("checkpoint result: %s" % result)
    state.verify()
    signal.signal(signal.SIGUSR1, state.verify)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
