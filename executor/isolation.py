"""The isolation layers of the sandbox and the Linux primitives they need.

Layers, outermost first:
- `bubblewrap`: the server runs inside bwrap, in new user, mount, network, IPC, UTS and PID namespaces, with a
  read-only view of the host's files, a private /tmp and /dev, no network but its own loopback, and as PID 1
  (so no job can signal it: the kernel drops signals to a namespace's init that it has no handler for).
- `job_namespaces`: each job is PID 1 of its own PID namespace with its own mount namespace: a private /proc
  that shows only its own processes, a private size-limited tmpfs as working directory, no capabilities and
  `no_new_privs`. When a job ends the kernel kills everything it started, `setsid` grandchildren included.
- `process_limit`: a pids cgroup around the whole sandbox (when one is writable), else `RLIMIT_NPROC` (which the
  kernel does not enforce for root).
- `rlimits`: always: address space, CPU time, file size, open files, no core dumps.

Not covered: reading the host's files (the view is read-only, not hidden), timing side channels, and jobs that
run at the same time talking to each other over the sandbox's own loopback.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
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


def bwrap_argv(bwrap: str, tmp_binds: list[str]) -> list[str]:
    """bwrap's options for the server: new namespaces, read-only host, private /tmp, /dev and /proc.

    `tmp_binds` are host paths under /tmp that the interpreter needs (a checkout or virtualenv there); they are
    bound back, read-only, over the private /tmp. The server keeps CAP_SYS_ADMIN and CAP_SETPCAP inside its own
    user namespace only, to give each job its own PID and mount namespaces and then drop them in the job.
    """
    binds = [arg for path in tmp_binds for arg in ("--ro-bind", path, path)]
    return [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--as-pid-1", "--die-with-parent", "--new-session",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", *binds,
            "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP", "--chdir", "/", "--"]


def interpreter_paths_under_tmp() -> list[str]:
    """The smallest set of directories under /tmp that hold this interpreter, its packages or this project."""
    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)),
                  str(Path(__file__).resolve().parent.parent), *(p for p in sys.path if p)}
    under_tmp = sorted({os.path.realpath(p) for p in candidates if os.path.isdir(p)
                        and os.path.realpath(p).startswith("/tmp/")})
    return [p for p in under_tmp if not any(p.startswith(q + "/") for q in under_tmp if q != p)]


def probe_bwrap(bwrap: str | None) -> str | None:
    """None if bwrap can start a sandbox here, else why not."""
    if bwrap is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        done = subprocess.run([*bwrap_argv(bwrap, []), "true"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap failed to run: {exc}"
    if done.returncode != 0:
        return f"bubblewrap cannot create namespaces here: {done.stderr.decode(errors='replace').strip()}"
    return None


@dataclass
class PidsCgroup:
    """A pids cgroup (v1 or v2) that bounds how many processes the whole sandbox holds."""

    path: Path

    @classmethod
    def create(cls, max_processes: int, name: str) -> PidsCgroup | None:
        for root in _pids_roots():
            path = root / name
            try:
                path.mkdir()
            except OSError as exc:
                log.debug("pids cgroup under %s unusable: %s", root, exc)
                continue
            try:
                (path / "pids.max").write_text(str(max_processes))
            except OSError as exc:
                log.debug("pids.max under %s not writable: %s", root, exc)
                _rmdir(path)
                continue
            return cls(path)
        return None

    def wrap(self, argv: list[str]) -> list[str]:
        """Run argv inside this cgroup: the shell moves itself in, then execs argv."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def remove(self) -> None:
        _rmdir(self.path)


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError as exc:
        log.debug("could not remove cgroup %s: %s", path, exc)


def _pids_roots() -> list[Path]:
    roots = []
    v1 = Path("/sys/fs/cgroup/pids")
    if v1.is_dir() and os.access(v1, os.W_OK):
        roots.append(v1)
    for v2 in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        control = v2 / "cgroup.subtree_control"
        if control.exists() and "pids" in control.read_text().split() and os.access(v2, os.W_OK):
            roots.append(v2)
    return roots


@dataclass
class Layers:
    """Which isolation layers a started sandbox has, and why any is missing."""

    present: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)

    def describe_missing(self) -> str:
        return "; ".join(f"{name}: {why}" for name, why in self.missing.items())


def server_command() -> tuple[list[str], dict[str, str]]:
    """The interpreter command that starts the fork server, and its environment."""
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p),
        "LANG": "C.UTF-8",
        "HOME": "/tmp",
        # Thread pools do not survive fork; one thread each also keeps a job's address space small.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return [sys.executable, "-u", "-m", "executor.server"], env
