"""A subprocess sandbox for candidate code: run it against tests, report pass/fail.

Layers, each cheap and each covering what the others miss:
- a fresh interpreter (`python -I`: no PYTHON* variables, no user site) with an EMPTY
  environment, so API keys of the parent never reach the child;
- resource limits set inside the child before user code runs: CPU seconds (RLIMIT_CPU),
  address space (RLIMIT_AS), file size (RLIMIT_FSIZE), open files, no core dumps;
- a wall-clock limit enforced by the parent, which kills the child's whole process group;
- a private network namespace (`unshare(CLONE_NEWNET)`: no interfaces but a downed
  loopback) where the kernel allows it, and in every case an audit hook (PEP 578) that
  refuses sockets, DNS, subprocesses, fork, ctypes, writes outside the throw-away working
  directory (also through a directory descriptor opened outside it, sqlite, FIFOs and
  device nodes), reads of other processes' /proc entries (where the parent's environment
  lives) and the C modules that fork or write without an audit event (`_posixsubprocess`,
  dbm).
The audit hook is a guard-rail against accidents and careless model output, not a boundary
against an adversary; the kernel-enforced layers are the limits, the netns and the env.

Example:
    >>> result = run_code("def f():\\n    return 1\\n", "assert f() == 1\\n")
    >>> result.passed
    True
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from reasonloom.orchestrator.types import FrozenModel

Status = Literal["passed", "failed", "timeout", "memory", "blocked", "error"]

# Exit codes the bootstrap uses to tell the parent why the program stopped.
_EXIT_MEMORY, _EXIT_BLOCKED = 86, 87
_PROGRAM = "program.py"


class SandboxLimits(FrozenModel):
    """What one run may use. Defaults suit unit-test programs such as HumanEval's."""

    cpu_s: int = Field(5, ge=1)              # CPU seconds (SIGXCPU past it)
    wall_s: float = Field(10.0, gt=0)        # wall clock, enforced by the parent
    memory_mb: int = Field(512, ge=64)       # address space; Python itself needs ~30 MB
    file_mb: int = Field(16, ge=1)           # largest file the program may write
    output_chars: int = Field(4000, ge=0)    # stdout/stderr kept in the result
    isolate_network: bool = True             # try a private network namespace first


class SandboxResult(FrozenModel):
    status: Status
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# The child's first code: limits, network namespace, audit hook, then the program. It is
# passed with `-c` so the program cannot replace it, and reads its settings from argv.
_BOOTSTRAP = r'''
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
for name, value in (("RLIMIT_CPU", (cfg["cpu_s"], cfg["cpu_s"] + 1)),
                    ("RLIMIT_AS", (cfg["memory"], cfg["memory"])),
                    ("RLIMIT_FSIZE", (cfg["file"], cfg["file"])),
                    ("RLIMIT_NOFILE", (64, 64)), ("RLIMIT_CORE", (0, 0))):
    try:
        resource.setrlimit(getattr(resource, name), value)
    except (ValueError, OSError):
        pass
if cfg["netns"]:
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).unshare(0x40000000)   # CLONE_NEWNET
    except Exception:
        pass   # not permitted here: the audit hook below still refuses sockets
ROOT = os.path.realpath(os.getcwd())
PID = str(os.getpid())
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
DENY = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
        "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg",
        "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
        "os.fork", "os.forkpty", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym",
        "ctypes.cdata", "os.kill", "os.killpg", "signal.pthread_kill", "sys.remote_exec"}
PATH_ARGS = {"os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,),
             "os.chmod": (0,), "os.chown": (0,), "os.symlink": (1,), "os.link": (1,),
             "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,),
             "shutil.move": (0, 1), "shutil.copyfile": (1,), "os.chflags": (0,),
             "os.setxattr": (0,), "os.removexattr": (0,), "sqlite3.connect": (0,)}
# C modules that fork/exec or write files without raising an audit event of their own:
# `_posixsubprocess.fork_exec` would start an unhooked process (a fork bomb, or a shell). It
# stays importable (asyncio imports subprocess) with fork_exec replaced below; a fresh
# import (after deleting it from sys.modules) is refused.
MODULES = {"_posixsubprocess", "_gdbm", "_dbm"}

class Blocked(PermissionError):
    pass

def inside(path):
    real = os.path.realpath(os.fsdecode(path))
    return real == ROOT or real.startswith(ROOT + os.sep)

def other_proc(path):
    parts = os.path.realpath(os.fsdecode(path)).split(os.sep)
    return len(parts) > 2 and parts[1] == "proc" and parts[2] not in (PID, "self")

def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return
        writing = bool(mode and any(c in str(mode) for c in "wax+")) or bool((flags or 0) & WRITE)
        if writing and not inside(path):
            raise Blocked(f"sandbox: writing outside the working directory: {path}")
        if other_proc(path):
            raise Blocked(f"sandbox: reading another process's /proc entry: {path}")
        # A descriptor of an outside directory would let `dir_fd=` writes (whose audit
        # event carries only the relative name) land outside.
        if not inside(path) and os.path.isdir(path):
            raise Blocked(f"sandbox: opening a directory outside the working directory: {path}")
    elif event in DENY:
        raise Blocked(f"sandbox: {event} is not allowed")
    elif event == "import" and args[0] in MODULES:
        raise Blocked(f"sandbox: importing {args[0]} is not allowed")
    elif event in PATH_ARGS:
        for i in PATH_ARGS[event]:
            if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)) and not inside(args[i]):
                raise Blocked(f"sandbox: {event} outside the working directory: {args[i]}")

def guarded(name, create):
    # mkfifo/mknod raise no audit event: wrap them (the originals leave the module).
    def create_inside(path, *args, **kwargs):
        if "dir_fd" in kwargs or not inside(path):
            raise Blocked(f"sandbox: {name} outside the working directory: {path}")
        return create(path, *args, **kwargs)
    return create_inside

def no_fork_exec(*args, **kwargs):
    raise Blocked("sandbox: starting a process (_posixsubprocess.fork_exec) is not allowed")

import _posixsubprocess, posix
_posixsubprocess.fork_exec = no_fork_exec
for name in ("mkfifo", "mknod"):
    if hasattr(posix, name):
        wrapper = guarded(name, getattr(posix, name))
        setattr(posix, name, wrapper)
        setattr(os, name, wrapper)

source = open("program.py").read()
code = compile(source, "program.py", "exec")
sys.addaudithook(hook)
try:
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
except MemoryError:
    sys.stderr.write("MemoryError\n")
    os._exit(86)
except Blocked as exc:
    sys.stderr.write(f"{exc}\n")
    os._exit(87)
'''


def _status(returncode: int, stderr: str, timed_out: bool) -> Status:
    if timed_out or returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "timeout"
    if returncode == _EXIT_MEMORY or "MemoryError" in stderr[-2000:]:
        return "memory"
    if returncode == _EXIT_BLOCKED or "sandbox:" in stderr[-2000:]:
        return "blocked"
    if returncode == 0:
        return "passed"
    if returncode < 0:
        return "error"   # killed by another signal (SIGSEGV, SIGXFSZ ...)
    return "failed"


def _tail(data: bytes, limit: int) -> str:
    text = data.decode("utf-8", "replace")
    return text[-limit:] if limit else ""


def run_code(program: str, tests: str = "", limits: SandboxLimits = SandboxLimits()
             ) -> SandboxResult:
    """Run `program` followed by `tests` in a fresh sandboxed interpreter; passed = exit 0."""
    with tempfile.TemporaryDirectory(prefix="reasonloom-sandbox-") as workdir:
        Path(workdir, _PROGRAM).write_text(program + "\n\n" + tests + "\n")
        cfg = {"cpu_s": limits.cpu_s, "memory": limits.memory_mb * 2**20,
               "file": limits.file_mb * 2**20, "netns": limits.isolate_network}
        out_path, err_path = Path(workdir, ".stdout"), Path(workdir, ".stderr")
        t0 = time.monotonic()
        # stdout/stderr go to files, not pipes: RLIMIT_FSIZE then bounds a print bomb, and
        # the parent never blocks on a full pipe.
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", _BOOTSTRAP, json.dumps(cfg)],
                                    cwd=workdir, env={}, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True, close_fds=True)
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)
        stdout, stderr = out_path.read_bytes(), err_path.read_bytes()
        rc = proc.returncode
        return SandboxResult(status=_status(rc, stderr.decode("utf-8", "replace"), timed_out),
                             returncode=rc, stdout=_tail(stdout, limits.output_chars),
                             stderr=_tail(stderr, limits.output_chars),
                             wall_s=time.monotonic() - t0)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child's session (it may have left grandchildren) and reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


async def arun_code(program: str, tests: str = "", limits: SandboxLimits = SandboxLimits()
                    ) -> SandboxResult:
    """`run_code` off the event loop (each run blocks one worker thread while it waits)."""
    return await asyncio.to_thread(run_code, program, tests, limits)


def humaneval_program(problem: dict, completion: str) -> tuple[str, str]:
    """(program, tests) for a HumanEval problem: prompt + completion, then check(entry)."""
    program = problem["prompt"] + completion
    tests = problem["test"] + f"\ncheck({problem['entry_point']})\n"
    return program, tests


def extract_code(text: str) -> str:
    """The last fenced code block of a reply (```python ... ```), else the reply itself."""
    blocks = text.split("```")
    if len(blocks) >= 3:
        body = blocks[-2] if len(blocks) % 2 == 1 else blocks[-3]
        first, _, rest = body.partition("\n")
        return rest if first.strip().lower() in ("python", "py", "python3", "") else body
    return text
