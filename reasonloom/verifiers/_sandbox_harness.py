"""The program bubblewrap starts: a trusted harness (this process) and the candidate's process.

The harness reads the tests from stdin, makes itself undumpable (no /proc/PID/mem, fd or
environ access for the candidate), and forks the candidate, which closes the verdict pipe
before anything of the candidate runs. The candidate's process loads `program.py`, then
answers calls over a pipe; the tests run HERE, in the harness, with the program's names
resolved to proxies, so an assertion is checked where the candidate's code cannot reach it.
Values cross as tagged JSON (numbers, strings, lists, tuples, dicts, sets, bytes): a
returned object cannot bring its own `__eq__`. The harness writes one JSON verdict to the
inherited verdict fd; an exit code, stderr text or `SystemExit(0)` decides nothing.

Run as `python -I -S -B -c SOURCE CONFIG_JSON`; stdlib only (it may run on the system Python).
"""
import builtins
import json
import os
import resource
import signal
import struct
import sys
import traceback

CFG = json.loads(sys.argv[1])
MAX_REPLY = 16 << 20
MAX_DEPTH = 200


# -- framing and values ----------------------------------------------------------------------------
def send(fd, obj):
    data = json.dumps(obj).encode()
    data = struct.pack("=I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def recv(fd):
    head = _read_exact(fd, 4)
    size = struct.unpack("=I", head)[0]
    if size > MAX_REPLY:
        raise EOFError("reply too large")
    return json.loads(_read_exact(fd, size))


def _read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        piece = os.read(fd, n - len(buf))
        if not piece:
            raise EOFError("the candidate's process is gone")
        buf += piece
    return buf


def encode(value, ref, depth=0):
    """Plain data as tagged JSON; anything else through `ref(value)` (a handle)."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return {"t": "int", "v": str(value)} if abs(value) > 2**53 else value
    if isinstance(value, float):
        return {"t": "float", "v": repr(value)}
    kind = type(value)
    if kind in (list, tuple, set, frozenset):
        return {"t": kind.__name__, "v": [encode(v, ref, depth + 1) for v in value]}
    if kind is dict:
        return {"t": "dict", "v": [[encode(k, ref, depth + 1), encode(v, ref, depth + 1)]
                                   for k, v in value.items()]}
    if kind in (bytes, complex):
        return {"t": kind.__name__, "v": value.hex() if kind is bytes else [value.real,
                                                                           value.imag]}
    return ref(value)


def decode(obj, unref, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, list):
        raise ValueError("untagged list")
    t, v = obj.get("t"), obj.get("v")
    if t == "int":
        return int(v)
    if t == "float":
        return float(v)
    if t in ("list", "tuple", "set", "frozenset"):
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[t](
            decode(x, unref, depth + 1) for x in v)
    if t == "dict":
        return {decode(k, unref, depth + 1): decode(x, unref, depth + 1) for k, x in v}
    if t == "bytes":
        return bytes.fromhex(v)
    if t == "complex":
        return complex(float(v[0]), float(v[1]))
    if t == "ref":
        return unref(int(obj["id"]))
    raise ValueError(f"unknown tag {t!r}")


# -- the candidate's side --------------------------------------------------------------------------
MEMORY = b'{"loaded": false, "raise": "MemoryError", "error": "MemoryError", "text": ""}'
MEMORY_REPLY = struct.pack("=I", len(MEMORY)) + MEMORY   # sent without allocating


def candidate(req_fd, rep_fd):
    limits = (("RLIMIT_CPU", (CFG["cpu_s"], CFG["cpu_s"] + 1)),
              ("RLIMIT_AS", (CFG["memory"], CFG["memory"])),
              ("RLIMIT_FSIZE", (CFG["file"], CFG["file"])), ("RLIMIT_NOFILE", (64, 64)),
              ("RLIMIT_CORE", (0, 0)))
    for name, value in limits:
        resource.setrlimit(getattr(resource, name), value)
    handles = []

    def ref(value):
        handles.append(value)
        return {"t": "ref", "id": len(handles) - 1}

    def failure(exc):
        # a refusal wrapped by library code (urllib's URLError) still reads `blocked`
        kind = "Blocked" if GUARD_FIRED else type(exc).__name__
        return {"error": kind, "text": str(exc)[:300]}

    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        code = compile(open("program.py").read(), "program.py", "exec")
        install_guard()
        exec(code, namespace)
        flush()
        send(rep_fd, {"loaded": True})
    except MemoryError:
        os.write(rep_fd, MEMORY_REPLY)
        os._exit(1)
    except BaseException as exc:   # SystemExit too: the program ended before its tests
        traceback.print_exc()
        flush()
        send(rep_fd, {"loaded": False, **failure(exc)})
        os._exit(1)
    while True:
        try:
            req = recv(req_fd)
        except EOFError:
            os._exit(0)
        try:
            value = answer(req, namespace, handles)
            flush()
            send(rep_fd, {"missing": True} if value is MISSING else
                 {"value": encode(value, ref)})
        except MemoryError:
            os.write(rep_fd, MEMORY_REPLY)
            os._exit(1)
        except BaseException as exc:
            flush()
            send(rep_fd, {"raise": type(exc).__name__, **failure(exc)})


MISSING = object()
# install_guard and GUARD_FIRED come from _sandbox_guard.py (sandbox.py prepends its source)


def flush():
    """The candidate's process ends with os._exit or SIGKILL: print's buffer goes out now."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def answer(req, namespace, handles):
    op = req["op"]
    if op == "get":
        return namespace.get(req["name"], MISSING)
    target = handles[int(req["id"])]
    if op == "call":
        return target(*decode(req["args"], handles.__getitem__),
                      **decode(req["kwargs"], handles.__getitem__))
    if op == "getattr":
        return getattr(target, req["name"])
    if op == "getitem":
        return target[decode(req["key"], handles.__getitem__)]
    return list(target)   # "list": iterate on this side (generators, custom iterables)


# -- the harness's side ----------------------------------------------------------------------------
class CandidateGone(BaseException):
    """The candidate's process died or broke the protocol: no test code may swallow this."""


class Remote:
    """A name of the candidate's program, as the tests see it."""

    def __init__(self, conn, handle):
        self._conn, self._handle = conn, handle

    def __call__(self, *args, **kwargs):
        return self._conn.ask({"op": "call", "id": self._handle,
                               "args": self._conn.out(list(args)),
                               "kwargs": self._conn.out(kwargs)})

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._conn.ask({"op": "getattr", "id": self._handle, "name": name})

    def __getitem__(self, key):
        return self._conn.ask({"op": "getitem", "id": self._handle, "key": self._conn.out(key)})

    def __iter__(self):
        return iter(self._conn.ask({"op": "list", "id": self._handle}))

    def __repr__(self):
        return f"<candidate object #{self._handle}>"


class Conn:
    def __init__(self, req_fd, rep_fd):
        self.req_fd, self.rep_fd, self.kind = req_fd, rep_fd, None

    def out(self, value):
        def ref(obj):
            if isinstance(obj, Remote):
                return {"t": "ref", "id": obj._handle}
            raise TypeError(f"cannot pass a {type(obj).__name__} to the candidate's code")
        return encode(value, ref)

    def ask(self, req, missing=None):
        try:
            send(self.req_fd, req)
            reply = recv(self.rep_fd)
            if "value" in reply:
                return decode(reply["value"], lambda i: Remote(self, i))
        except (EOFError, OSError, ValueError, TypeError, KeyError, RecursionError) as exc:
            if isinstance(exc, TypeError) and "cannot pass" in str(exc):
                raise
            raise CandidateGone(f"{type(exc).__name__}: {exc}") from None
        if reply.get("missing"):
            return missing
        name, text = str(reply.get("raise")), str(reply.get("text"))
        self.kind = name
        cls = getattr(builtins, name, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            raise cls(text)
        raise RuntimeError(f"{name}: {text}")


class RemoteGlobals(dict):
    """The tests' globals: a name they do not define comes from the candidate's program."""

    def __init__(self, conn):
        super().__init__(__name__="__main__", __builtins__=builtins)
        self.conn = conn

    def __missing__(self, name):
        if hasattr(builtins, name):
            raise KeyError(name)   # Python then looks in builtins
        value = self.conn.ask({"op": "get", "name": name}, missing=MISSING)
        if value is MISSING:
            raise KeyError(name)
        self[name] = value
        return value


STATUS = {"MemoryError": "memory", "Blocked": "blocked"}


def ended(pid):
    """The verdict for a candidate's process that stopped answering."""
    _, code = os.waitpid(pid, 0)
    if os.WIFSIGNALED(code) and os.WTERMSIG(code) in (signal.SIGXCPU, signal.SIGKILL):
        return {"status": "timeout", "detail": f"killed by signal {os.WTERMSIG(code)}"}
    if os.WIFSIGNALED(code):
        return {"status": "error", "detail": f"killed by signal {os.WTERMSIG(code)}"}
    return {"status": "failed", "detail": "the program exited before its tests finished"}


def judge(pid, tests, conn):
    try:
        first = recv(conn.rep_fd)
    except (EOFError, ValueError):
        return ended(pid)
    if not first.get("loaded"):
        kind = str(first.get("error"))
        return {"status": STATUS.get(kind, "failed"), "detail": f"{kind} while loading"}
    if not tests.strip():
        return {"status": "passed", "detail": "the program ran (no tests)"}
    namespace = RemoteGlobals(conn)
    try:
        exec(compile(tests, "tests", "exec"), namespace)
    except CandidateGone as exc:
        verdict = ended(pid)
        verdict["detail"] += f" ({exc})"
        return verdict
    except BaseException as exc:
        traceback.print_exc()
        kind = conn.kind if conn.kind in STATUS else type(exc).__name__
        return {"status": STATUS.get(kind, "failed"), "detail": f"{type(exc).__name__} in tests"}
    return {"status": "passed", "detail": "every test ran"}


def main():
    verdict_fd = CFG["verdict_fd"]
    tests = sys.stdin.read()
    import ctypes
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)   # PR_SET_DUMPABLE 0: no /proc/PID/{mem,fd,environ}
    if CFG.get("nproc"):
        resource.setrlimit(resource.RLIMIT_NPROC, (CFG["nproc"], CFG["nproc"]))
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        os.close(verdict_fd)   # before a single line of the candidate's runs
        os.close(req_w)
        os.close(rep_r)
        candidate(req_r, rep_w)
        os._exit(0)
    os.close(req_r)
    os.close(rep_w)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    verdict = judge(pid, tests, Conn(req_w, rep_r))
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(verdict_fd, json.dumps(verdict).encode())
    os.close(verdict_fd)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


if __name__ == "__main__":
    main()
