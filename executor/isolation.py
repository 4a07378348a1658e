"""The isolation layers of the sandbox and the Linux primitives they need.

Layers, outermost first:
- `bubblewrap` (`executor.launch`): the server sees an allowlist of host paths, read-only, in new user, mount,
  network, IPC, UTS and PID namespaces, with a private /tmp, a read-only /dev and its own /proc; it is PID 1 of its
  namespace (so no job can signal it: the kernel drops signals to a namespace's init that it has no handler for).
- `identity`: a caller that is root drops to the sandbox's own unprivileged uid/gid (`uid`, `gid`; by default
  60420, not the host's shared `nobody`) with no supplementary groups before the user namespace is made, so root's
  files, root-owned sockets and the sysctls stay out of reach even where a mount leaks, and no host user shares
  the sandbox's per-user kernel limits; a caller that is not root is unprivileged already.
- `job_namespaces`: each job is PID 1 of its own PID namespace with its own mount, IPC and UTS namespaces and a
  fresh session keyring: a private /proc (its /proc/sys read-only) that shows only its own processes, a private
  size-limited tmpfs as working directory and /tmp, its own size-limited /dev/shm, no capabilities and
  `no_new_privs`. When a job ends the kernel kills everything it started, `setsid` grandchildren included, and
  its files, IPC objects and keys go with it.
- `seccomp` (`executor.syscalls`): loaded by every job after its setup; an allowlist whose default action refuses,
  sockets of `AF_UNIX`, `AF_INET` and `AF_INET6` only.
- `zygote` (`executor.zygote`): jobs are forked from a template that never received any job's code or output, so
  no job holds another's data in its memory.
- `process_limit` and `memory_limit` (`executor.cgroup`): a cgroup (v1 or v2) around each server, where one is
  writable; else `RLIMIT_NPROC` for processes (binding for the unprivileged identity, not for root).
- `job_limits` (`executor.cgroup`): below it, a memory and a pids group per job slot, which each job joins
  before it runs anything: its tmpfs files, pipes and sockets count, and the OOM killer and the pids limit hit it.
  The jobs' `oom_score_adj` is 1000, so the kernel's OOM killer takes a job before the trainer.
- `rlimits`: always: address space, CPU time, file size, open files, no core dumps.

Not covered: timing side channels, and jobs that run at the same time talking to each other over the sandbox's
own loopback.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
KEYCTL_JOIN_SESSION_KEYRING = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None), f"mount {target}")


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           f"prctl {option}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_capabilities(last_cap: int) -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable sets, and set no_new_privs.

    With the bounding set empty, even an `execve` by uid 0 gains no capability back.
    """
    for cap in range(last_cap + 1):
        prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def last_capability() -> int:
    return int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def sethostname(name: str) -> None:
    _check(_libc.sethostname(name.encode(), len(name)), "sethostname")


def join_new_session_keyring(keyctl_nr: int) -> None:
    """Replace the session keyring with a fresh, empty, anonymous one (`keyctl(KEYCTL_JOIN_SESSION_KEYRING,
    NULL)`), so that nothing the caller or an earlier job holds in a keyring is reachable."""
    if _libc.syscall(ctypes.c_long(keyctl_nr), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), None) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"keyctl(JOIN_SESSION_KEYRING): {os.strerror(err)}")


REQUIRED = ("bubblewrap", "identity", "job_namespaces", "seccomp")  # isolation "full" refuses to run without


@dataclass
class Layers:
    """Which isolation layers a started sandbox has, and why any is missing."""

    present: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)

    def describe_missing(self, names: tuple[str, ...] | None = None) -> str:
        return "; ".join(f"{name}: {why}" for name, why in self.missing.items() if names is None or name in names)

    @property
    def missing_required(self) -> list[str]:
        return [name for name in REQUIRED if name in self.missing]


def server_command() -> tuple[list[str], dict[str, str]]:
    """The interpreter command that starts the fork server, and its environment: fixed, nothing of the caller's
    (every job can read the environment its process image was started with, in /proc/self/environ)."""
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": package_root,
        "LANG": "C.UTF-8",
        "HOME": "/tmp",
        # Thread pools do not survive fork; one thread each also keeps a job's address space small.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # As the top-level `executor` (its imports are relative): the sandbox shows this package and nothing else of
    # delegate's, so the server cannot import it as `delegate.executor`.
    return [sys.executable, "-u", "-m", "executor.server"], env
