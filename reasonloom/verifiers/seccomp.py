"""The seccomp filter bubblewrap installs on candidate code (`bwrap --seccomp FD`).

A deny list on top of the namespaces: the calls a unit-test program never needs and an escape
usually does (debugging other processes, mounting, entering or making namespaces, kernel
keyrings, eBPF, io_uring, module loading). Denied calls fail with EPERM; a call from another
architecture's table (x32 numbers, a 32-bit `int 0x80`) kills the process, since the numbers
below are x86-64's. Other machines get no filter (`filter_program()` returns None) and keep
the namespaces and limits.
"""
from __future__ import annotations

import platform
import struct

# x86-64 numbers, from <asm/unistd_64.h>
DENIED = {
    "ptrace": 101, "syslog": 103, "uselib": 134, "personality": 135, "vhangup": 153,
    "pivot_root": 155, "adjtimex": 159, "chroot": 161, "acct": 163, "settimeofday": 164,
    "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "iopl": 172,
    "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179,
    "lookup_dcookie": 212, "clock_settime": 227, "kexec_load": 246, "add_key": 248,
    "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "kexec_file_load": 320,
    "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
}
AUDIT_ARCH_X86_64 = 0xC000003E
X32_BIT = 0x40000000
# classic BPF opcodes and seccomp return values (<linux/filter.h>, <linux/seccomp.h>)
LD_W_ABS, JEQ_K, JGE_K, RET_K = 0x20, 0x15, 0x35, 0x06
RET_KILL_PROCESS, RET_ALLOW, RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
EPERM = 1
# offsets in struct seccomp_data
NR_OFFSET, ARCH_OFFSET = 0, 4


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def filter_program() -> bytes | None:
    """The filter as bwrap reads it (an array of struct sock_filter), or None off x86-64.

    0 load arch; 1 same arch? skip 2; 2 kill; 3 load nr; 4 x32 number? -> kill;
    5.. one `jeq` per denied call -> EPERM; then allow, EPERM, kill. A jump's offset counts
    from the next instruction."""
    if platform.machine() != "x86_64":
        return None
    numbers = sorted(DENIED.values())
    n = len(numbers)
    deny_at, kill_at = 6 + n, 7 + n
    prog = [_insn(LD_W_ABS, 0, 0, ARCH_OFFSET),
            _insn(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
            _insn(RET_K, 0, 0, RET_KILL_PROCESS),
            _insn(LD_W_ABS, 0, 0, NR_OFFSET),
            # x32 calls reach the same handlers under other numbers: kill, don't check twice
            _insn(JGE_K, kill_at - 4 - 1, 0, X32_BIT)]
    prog += [_insn(JEQ_K, deny_at - (5 + i) - 1, 0, nr) for i, nr in enumerate(numbers)]
    prog += [_insn(RET_K, 0, 0, RET_ALLOW), _insn(RET_K, 0, 0, RET_ERRNO | EPERM),
             _insn(RET_K, 0, 0, RET_KILL_PROCESS)]
    assert len(prog) == kill_at + 1
    return b"".join(prog)
