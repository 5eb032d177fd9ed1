"""The guard rail inside the sandbox: an audit hook that labels what a unit-test program has no
business doing (sockets, processes, writes outside its directory) as `blocked`.

sandbox.py prepends this source to _sandbox_harness.py's; it is not the boundary (the
namespaces, seccomp and limits are), and a program can switch it off (the security tests do).
"""
import os
import sys

GUARD_FIRED = []


def install_guard():
    """A guard rail, not the boundary (the namespaces, seccomp and limits are): an audit hook
    that refuses what a unit-test program has no business doing, so the result says
    `blocked` rather than a bare failure."""
    root = os.path.realpath(os.getcwd())
    deny = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
            "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto",
            "socket.sendmsg", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
            "os.spawn", "os.fork", "os.forkpty", "pty.spawn", "ctypes.dlopen",
            "ctypes.dlsym", "ctypes.cdata", "os.kill", "os.killpg", "signal.pthread_kill"}
    path_args = {"os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,),
                 "os.chmod": (0,), "os.chown": (0,), "os.symlink": (1,), "os.link": (1,),
                 "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,),
                 "shutil.move": (0, 1), "shutil.copyfile": (1,), "sqlite3.connect": (0,)}
    write = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    class Blocked(PermissionError):
        def __init__(self, message):
            super().__init__(message)
            GUARD_FIRED.append(message)

    def inside(path):
        real = os.path.realpath(os.fsdecode(path))
        return real == root or real.startswith(root + os.sep)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int):
                return
            writing = bool(mode and any(c in str(mode) for c in "wax+")) or bool(
                (flags or 0) & write)
            if writing and not inside(path):
                raise Blocked(f"sandbox: writing outside the working directory: {path}")
            parts = os.path.realpath(os.fsdecode(path)).split(os.sep)
            if len(parts) > 2 and parts[1] == "proc" and parts[2] not in (str(os.getpid()),
                                                                        "self", "net"):
                raise Blocked(f"sandbox: reading another process's /proc entry: {path}")
        elif event in deny:
            raise Blocked(f"sandbox: {event} is not allowed")
        elif event == "import" and args[0] in ("_posixsubprocess", "_gdbm", "_dbm"):
            raise Blocked(f"sandbox: importing {args[0]} is not allowed")
        elif event in path_args:
            for i in path_args[event]:
                if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)) \
                        and not inside(args[i]):
                    raise Blocked(f"sandbox: {event} outside the working directory")

    def refused(*args, **kwargs):
        raise Blocked("sandbox: starting or creating this is not allowed")

    import _posixsubprocess
    import posix
    _posixsubprocess.fork_exec = refused
    for name in ("mkfifo", "mknod"):
        original = getattr(posix, name, None)
        if original is not None:
            def guarded(path, *args, _original=original, _name=name, **kwargs):
                if "dir_fd" in kwargs or not inside(path):
                    raise Blocked(f"sandbox: {_name} outside the working directory: {path}")
                return _original(path, *args, **kwargs)
            setattr(posix, name, guarded)
            setattr(os, name, guarded)
    sys.addaudithook(hook)
