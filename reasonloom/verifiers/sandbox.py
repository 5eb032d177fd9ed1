"""A sandbox for candidate code: bubblewrap's namespaces, seccomp and limits around a harness
whose verdict the candidate cannot forge.

- The boundary is the kernel's, set up by bubblewrap (`bwrap`): new user, PID, mount,
  network, IPC, UTS and cgroup namespaces; a read-only /usr (and the interpreter's prefix) and
  nothing else of the host's files (no /etc, /home, /root, no host /proc); a private
  writable /sandbox, /tmp and /dev/shm; an empty environment; no capabilities; a seccomp filter
  (`verifiers/seccomp.py`); `--die-with-parent`, and the whole tree killed at the end (the
  PID namespace dies with its init). Run as root, bwrap itself runs under a fresh unprivileged
  uid per run, so RLIMIT_NPROC counts that run's processes only.
- Without bubblewrap, `run_code` refuses (IsolationUnavailable, one line) unless the caller
  says `SandboxLimits(isolation="none")`.
- The verdict comes from the harness (`_sandbox_harness.py`) over a pipe whose descriptor the
  candidate's process closes before its first line runs; the tests run in the harness and
  call the program's functions across a process boundary. The exit code and stderr decide
  nothing: `raise SystemExit(0)` before the tests is a failure.
- Inside, an audit hook refuses sockets, processes, writes outside /sandbox ... so such programs
  report `blocked` (a guard rail and a label, not the boundary).

Example:
    >>> result = run_code("def f():\\n    return 1\\n", "assert f() == 1\\n")
    >>> result.passed
    True
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from reasonloom.types import FrozenModel
from reasonloom.verifiers.seccomp import filter_program

Status = Literal["passed", "failed", "timeout", "memory", "blocked", "error"]
_STATUSES = set(Status.__args__)   # type: ignore[attr-defined]
# one `-c` program: the guard rail's source, then the harness's (which calls install_guard)
_HARNESS = "\n".join(Path(__file__).with_name(name).read_text()
                     for name in ("_sandbox_guard.py", "_sandbox_harness.py"))
_UIDS = itertools.count()
_FIRST_UID = 3_000_000   # above any real account; one per run, cycling


class IsolationUnavailable(RuntimeError):
    """No kernel isolation here, and the caller did not accept running without it."""


class SandboxLimits(FrozenModel):
    """What one run may use. Defaults suit unit-test programs such as HumanEval's."""

    cpu_s: int = Field(5, ge=1)              # CPU seconds (SIGXCPU past it)
    wall_s: float = Field(10.0, gt=0)        # wall clock, enforced by the parent
    memory_mb: int = Field(512, ge=64)       # address space; Python itself needs ~30 MB
    file_mb: int = Field(16, ge=1)           # largest file the program may write
    output_chars: int = Field(4000, ge=0)    # stdout/stderr kept in the result
    processes: int = Field(16, ge=4)         # RLIMIT_NPROC for the run's own uid (root only)
    # bwrap: namespaces + seccomp (refuses when unavailable); none: the harness and the
    # audit hook only, for code you trust (say so explicitly)
    isolation: Literal["bwrap", "none"] = "bwrap"
    isolate_network: bool = True             # kept for old callers: bwrap always does


class SandboxResult(FrozenModel):
    status: Status
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    detail: str = ""                         # what the harness saw (or why there is no verdict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _readable_by_all(path: str) -> bool:
    """Whether an unprivileged uid can run `path` (every parent searchable, file r-x)."""
    p = Path(path)
    return all(os.stat(d).st_mode & 0o001 for d in p.parents) and \
        os.stat(p).st_mode & 0o005 == 0o005


@functools.cache
def _interpreter() -> tuple[str, str]:
    """(python, its prefix to bind): ours if the sandbox uid can reach it, else the system's."""
    ours = os.path.realpath(sys.executable)
    if os.geteuid() != 0 or _readable_by_all(ours):
        return ours, sys.base_prefix
    system = shutil.which("python3", path="/usr/bin:/bin")
    return (os.path.realpath(system), "/usr") if system else (ours, sys.base_prefix)


def _bwrap_args(workdir: str, seccomp_fd: int | None) -> list[str]:
    python, prefix = _interpreter()
    args = ["bwrap", "--unshare-user", *_no_nested_userns(), "--unshare-pid", "--unshare-net",
            "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent",
            "--new-session",
            "--cap-drop", "ALL", "--clearenv", "--setenv", "PATH", "/usr/bin",
            "--setenv", "LANG", "C.UTF-8", "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib64", "lib32"):   # merged-/usr links, or the dirs
        if os.path.islink(f"/{top}"):
            args += ["--symlink", os.readlink(f"/{top}"), f"/{top}"]
        elif os.path.isdir(f"/{top}"):
            args += ["--ro-bind", f"/{top}", f"/{top}"]
    if not prefix.startswith("/usr/"):
        args += ["--ro-bind", prefix, prefix]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm",
             "--bind", workdir, "/sandbox", "--chdir", "/sandbox"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return args + ["--", python]


def _sandbox_uid() -> int | None:
    """A uid for this run (as root): the pid spreads processes apart, the counter runs apart."""
    if os.geteuid() != 0:
        return None
    return _FIRST_UID + (os.getpid() * 7919 + next(_UIDS)) % 1_000_000


@functools.cache
def _no_nested_userns() -> tuple[str, ...]:
    """bwrap >= 0.8 can forbid making user namespaces inside (clone(CLONE_NEWUSER) is out of
    the seccomp filter's reach without argument checks)."""
    try:
        help_text = subprocess.run(["bwrap", "--help"], capture_output=True, text=True,
                                   timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return ("--disable-userns",) if "--disable-userns" in help_text else ()


@functools.cache
def isolation_problem() -> str | None:
    """Why bubblewrap cannot isolate here (None when it can); probed once per process."""
    if not shutil.which("bwrap"):
        return "bubblewrap (bwrap) is not installed (apt-get install bubblewrap)"
    with tempfile.TemporaryDirectory(prefix="reasonloom-probe-") as workdir:
        uid = _sandbox_uid()
        if uid is not None:
            os.chown(workdir, uid, uid)
        try:
            probe = subprocess.run([*_bwrap_args(workdir, None), "-I", "-S", "-c", "pass"],
                                   capture_output=True, timeout=60, user=uid, group=uid,
                                   extra_groups=[] if uid is not None else None)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap did not start ({exc})"
    if probe.returncode != 0:
        first = (probe.stderr.decode(errors="replace").strip().splitlines() or ["?"])[0]
        return f"bubblewrap cannot create its namespaces here ({first[:160]})"
    return None


def run_code(program: str, tests: str = "", limits: SandboxLimits = SandboxLimits()
             ) -> SandboxResult:
    """Run `program`, then `tests` against it, in a fresh sandbox; passed = the harness ran
    every test (or, without tests, the program ran to its end)."""
    if limits.isolation == "bwrap":
        problem = isolation_problem()
        if problem:
            raise IsolationUnavailable(f"sandbox: refusing to run untrusted code: {problem}; "
                                       f"pass isolation='none' to run it without isolation")
    workdir = tempfile.mkdtemp(prefix="reasonloom-sandbox-")
    try:
        return _run_in(workdir, program, tests, limits)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_in(workdir: str, program: str, tests: str, limits: SandboxLimits) -> SandboxResult:
    Path(workdir, "program.py").write_text(program + "\n")
    uid = _sandbox_uid() if limits.isolation == "bwrap" else None
    if uid is not None:
        os.chown(workdir, uid, uid)
        os.chown(Path(workdir, "program.py"), uid, uid)
    verdict_r, verdict_w = os.pipe()
    keep = [verdict_w]
    cfg = {"cpu_s": limits.cpu_s, "memory": limits.memory_mb * 2**20,
           "file": limits.file_mb * 2**20, "verdict_fd": verdict_w,
           "nproc": limits.processes if uid is not None else None}
    harness = ["-I", "-S", "-B", "-c", _HARNESS, json.dumps(cfg)]
    if limits.isolation == "bwrap":
        bpf = filter_program()
        seccomp_fd = None
        if bpf is not None:
            seccomp_fd, seccomp_w = os.pipe()
            os.write(seccomp_w, bpf)
            os.close(seccomp_w)
            keep.append(seccomp_fd)
        cmd, cwd, env = [*_bwrap_args(workdir, seccomp_fd), *harness], None, {}
    else:
        cmd, cwd, env = [sys.executable, *harness], workdir, {}
    out_path, err_path = Path(workdir, ".stdout"), Path(workdir, ".stderr")
    t0 = time.monotonic()
    timed_out = False
    # stdout/stderr go to files, not pipes: RLIMIT_FSIZE then bounds a print bomb, and the
    # parent never blocks on a full pipe
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out,
                                    stderr=err, start_new_session=True, pass_fds=keep,
                                    user=uid, group=uid,
                                    extra_groups=[] if uid is not None else None)
        finally:
            for fd in keep:
                os.close(fd)
        try:
            proc.stdin.write(tests.encode("utf-8", "replace"))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=max(0.1, limits.wall_s - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc)
    verdict = _read_verdict(verdict_r)
    status: Status = "timeout" if timed_out else verdict.get("status", "error")
    if status not in _STATUSES:
        status = "error"
    return SandboxResult(status=status, returncode=proc.returncode,
                         stdout=_tail(out_path.read_bytes(), limits.output_chars),
                         stderr=_tail(err_path.read_bytes(), limits.output_chars),
                         wall_s=time.monotonic() - t0,
                         detail=str(verdict.get("detail", "no verdict from the harness"))[:300])


def _read_verdict(fd: int) -> dict:
    """The harness's one JSON line; anything else (nothing, junk) is no verdict."""
    try:
        os.set_blocking(fd, False)
        data = os.read(fd, 65536)
    except (BlockingIOError, OSError):
        data = b""
    finally:
        os.close(fd)
    try:
        verdict = json.loads(data)
    except ValueError:
        return {}
    return verdict if isinstance(verdict, dict) else {}


def _tail(data: bytes, limit: int) -> str:
    text = data.decode("utf-8", "replace")
    return text[-limit:] if limit else ""


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill bwrap's group; its PID namespace (and every process the program left in it) dies
    with it. Then reap."""
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
