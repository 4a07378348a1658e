"""The system calls a job may make: a seccomp allowlist, built once in the server and loaded by every job at the
end of its setup (its namespaces and mounts are made by then).

The filter's default action refuses (`EPERM`): a system call is allowed only if `ALLOWED` names it, so a call the
kernel adds later is refused until someone lists it. `ALLOWED` is what CPython, numpy, sympy, mpmath, the shell
tools a program may start, and the sandbox's test suite and coder-style programs were seen to call when run under
a filter whose default action logs (`build(log_unlisted=True)`; docs/executor.md says how to repeat that). A few
calls are allowed only with some arguments:
- `socket` for `AF_UNIX`, `AF_INET` and `AF_INET6` only (the network namespace is empty: loopback only), and
  `socketpair` for `AF_UNIX`; every other family (`AF_VSOCK`, `AF_NETLINK`, `AF_PACKET`, `AF_ALG`, ...) is refused.
- `clone` without any namespace flag; `clone3` answers `ENOSYS` (a filter cannot read its flags, which sit in
  memory; the C library then falls back to `clone`).

Left out on purpose, though programs could use them: `memfd_create` (memory that no address-space limit counts),
`inotify_*` (a per-user pool of instances), the keyrings, namespaces, mounts, `ptrace`, `bpf`, `perf_event_open`,
`io_uring_*`, `userfaultfd`, `splice`/`vmsplice`/`tee`, System V IPC and POSIX message queues.

libseccomp through `pyseccomp` (API-compatible with libseccomp's own Python bindings, which are not on PyPI):
libseccomp knows every architecture's syscall numbers and emits a filter that kills any call made through another
architecture's ABI (x32, the 32-bit `int 0x80` path), so a job cannot dodge the list by switching ABI.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import socket
import tempfile
from typing import Any

from . import isolation

CLONE_NEWUSER = 0x10000000
# Every namespace flag `clone` takes: a job never makes a namespace (mount, cgroup, UTS, IPC, user, PID, net).
CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
SOCKET_FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)

ALLOWED = (
    # files and descriptors
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
    "open", "openat", "creat", "close", "close_range", "lseek", "dup", "dup2", "dup3", "pipe", "pipe2",
    "fcntl", "flock", "fsync", "fdatasync", "ftruncate", "truncate", "fallocate", "fadvise64", "ioctl",
    "stat", "lstat", "fstat", "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2",
    "getdents", "getdents64", "getcwd", "chdir", "fchdir", "mkdir", "mkdirat", "rmdir", "rename", "renameat",
    "renameat2", "link", "linkat", "unlink", "unlinkat", "symlink", "symlinkat", "readlink", "readlinkat",
    "chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat", "umask", "utime", "utimes",
    "utimensat", "futimesat", "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
    "sendfile", "copy_file_range",
    # waiting on descriptors
    "select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait",
    "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "timerfd_create", "timerfd_settime", "timerfd_gettime",
    "signalfd", "signalfd4",
    # memory
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore", "mlock", "munlock", "mbind",
    "get_mempolicy",
    # processes, threads, signals (all inside the job's own PID namespace)
    "fork", "vfork", "execve", "exit", "exit_group", "wait4", "waitid", "kill", "tgkill", "tkill",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend", "rt_sigtimedwait",
    "sigaltstack", "pause", "restart_syscall", "futex", "set_robust_list", "set_tid_address", "rseq",
    "arch_prctl", "prctl", "getpid", "getppid", "gettid", "getpgrp", "getpgid", "setpgid", "getsid", "setsid",
    "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups",
    "getrlimit", "setrlimit", "prlimit64", "getrusage", "times", "getpriority", "setpriority",
    "sched_yield", "sched_getaffinity", "sched_getparam", "sched_getscheduler", "sched_get_priority_max",
    "sched_get_priority_min", "getcpu",
    # time
    "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time", "alarm",
    "getitimer", "setitimer", "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun",
    "timer_delete",
    # the machine, randomness
    "uname", "sysinfo", "getrandom",
    # sockets (`socket` and `socketpair` themselves: see `build`)
    "bind", "listen", "accept", "accept4", "connect", "getsockname", "getpeername", "sendto", "recvfrom",
    "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "setsockopt", "getsockopt",
)


def missing() -> str | None:
    """None if a filter can be built here, else what to install."""
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: the module loads libseccomp.so.2 at import
        return f"libseccomp is unusable ({exc}): pip install pyseccomp; apt-get install libseccomp2"
    return None


def build(log_unlisted: bool = False) -> Any:
    """The job filter (a `pyseccomp.SyscallFilter`): `ALLOWED`, `socket`/`socketpair` for the families in
    `SOCKET_FAMILIES`, `clone` without namespace flags, `clone3` as ENOSYS; anything else EPERM.

    `log_unlisted` makes the default action log-and-allow instead (the kernel's audit log then names each
    unlisted call a job made): how `ALLOWED` is found, never how jobs run."""
    import pyseccomp as sc

    rules = sc.SyscallFilter(defaction=sc.LOG if log_unlisted else sc.ERRNO(errno.EPERM))
    with contextlib.suppress(RuntimeError, ValueError, OSError):  # libseccomp before 2.5: a linear list
        rules.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # a binary tree: every call a job makes passes the filter
    for name in ALLOWED:
        try:
            rules.add_rule(sc.ALLOW, name)
        except (OSError, ValueError, RuntimeError):
            pass  # not a system call of this architecture (e.g. `open` on arm64): nothing to allow
    for family in SOCKET_FAMILIES:
        rules.add_rule(sc.ALLOW, "socket", sc.Arg(0, sc.EQ, family))
    rules.add_rule(sc.ALLOW, "socketpair", sc.Arg(0, sc.EQ, socket.AF_UNIX))
    rules.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_NAMESPACES, 0))
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    return rules


def compile_filter(rules: Any) -> bytes:
    """The filter as the kernel's BPF program (libseccomp's own export), compiled once in the server."""
    with tempfile.TemporaryFile() as file:
        rules.export_bpf(file)
        file.seek(0)
        return file.read()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2


def install(program: bytes) -> None:
    """Load a compiled filter into this process (no_new_privs must be set). libseccomp's `load()` would compile
    the rules again in every job (bench/NOTES.md); the kernel takes the same program from a buffer."""
    buffer = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    isolation.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog))


def number(name: str) -> int:
    """The native system call number of `name` (for tests and for calls the C library does not wrap)."""
    import pyseccomp as sc

    return sc.resolve_syscall(sc.Arch.NATIVE, name)
