"""How a sandbox server is started: the files it sees, the host identity it runs as, its namespaces.

Two bubblewrap stages, then the server:
1. **outer**, as the caller (as root, able to read any path): a new mount and PID namespace whose root holds only
   an allowlist, read-only: `/usr` and the `/bin`, `/lib*` links, a few `/etc` files the runtime reads, the
   interpreter's prefixes (its virtual environment included) and the executor package. No `/home`, `/root`
   (beyond the interpreter inside it), `/var`, `/run`, `/work`, nor the rest of the project. When the caller is
   root, `setpriv` then drops to the sandbox's unprivileged uid/gid with no supplementary groups.
2. **inner**, as that unprivileged identity: new user, PID, network, IPC, UTS and cgroup namespaces over a
   read-only view of the outer root, a private `/tmp`, a read-only `/dev`, its own `/proc`. The server keeps
   CAP_SYS_ADMIN and CAP_SETPCAP in its own user namespace only, to give each job namespaces of its own.

The outer stage's PID namespace ties the chain's life to its first process: a monitor that dropped its
capabilities cannot signal a process of another uid, but when PID 1 of a namespace dies the kernel kills every
process in it, so killing the outer bwrap (or the caller dying) takes the whole sandbox with it.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # links into /usr on merged-/usr systems
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives", "nsswitch.conf")
PACKAGE_DIR = Path(__file__).resolve().parent
# Where the server and its jobs see the per-job cgroups: under /tmp, so that each job's own /tmp hides them once
# it has joined its own group.
JOB_CGROUPS = "/tmp/.delegate-cgroups"


def runtime_paths() -> list[str]:
    """Host directories a job's Python needs besides /usr: the interpreter's prefixes (a virtual environment's
    included, whose `pyvenv.cfg` the interpreter reads), site-packages, and the executor package itself."""
    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
                  os.path.dirname(os.path.realpath(sys.executable)), *site.getsitepackages(), str(PACKAGE_DIR)}
    if site.ENABLE_USER_SITE:
        candidates.add(site.getusersitepackages())
    real = {os.path.realpath(p) for p in candidates if os.path.isdir(p)}
    real = {p for p in real if p != "/" and p != "/usr" and not p.startswith("/usr/")}
    return sorted(p for p in real if not any(p.startswith(q + "/") for q in real))


def _parents(paths: list[str]) -> list[str]:
    """Every ancestor directory of `paths` that the outer root must create (world-readable, so that the dropped
    identity can walk to them: bubblewrap would make them 0700 and root's)."""
    needed = {str(parent) for path in paths for parent in Path(path).parents if str(parent) != "/"}
    return sorted(needed - {"/tmp", "/usr", "/etc"}, key=lambda p: (p.count("/"), p))


def _root_fs(paths: list[str]) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in SYSTEM_DIRS:
        path = f"/{name}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--perms", "0755", "--dir", "/etc"]
    args += [arg for name in ETC_FILES if os.path.exists(f"/etc/{name}") for arg in ("--ro-bind", f"/etc/{name}",
                                                                                     f"/etc/{name}")]
    # The host's /proc, so that the inner stage may mount a /proc of its own (the kernel allows that only where a
    # /proc is already fully visible); the inner stage covers it before anything runs.
    args += ["--bind", "/proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for parent in _parents(paths):
        args += ["--perms", "0755", "--dir", parent]
    return args + [arg for path in paths for arg in ("--ro-bind", path, path)]


def server_argv(bwrap: str, setpriv: str | None, identity: tuple[int, int] | None, paths: list[str],
                cgroups: dict[str, str] | None = None) -> list[str]:
    """The command prefix that runs a program as the sandbox server (see the module docstring).

    `identity` is the (uid, gid) to drop to (None: keep the caller's, which must then be unprivileged); `paths`
    are the host directories to show (`runtime_paths`), plus the programs bwrap and setpriv where they live
    outside /usr; `cgroups` maps a controller to the host group holding the job slots, shown writable at
    `JOB_CGROUPS/<controller>` (jobs move themselves into their slot before their own /tmp hides it)."""
    programs = [p for p in (bwrap, setpriv) if p and not p.startswith("/usr/")]
    outer = [bwrap, "--die-with-parent", "--unshare-pid", *_root_fs(sorted({*paths, *programs}))]
    inner_cgroups: list[str] = []
    if cgroups:
        outer += ["--perms", "0755", "--dir", JOB_CGROUPS]
        for controller, host_dir in sorted(cgroups.items()):
            outer += ["--bind", host_dir, f"{JOB_CGROUPS}/{controller}"]
        inner_cgroups = ["--bind", JOB_CGROUPS, JOB_CGROUPS]
    drop: list[str] = []
    if identity is not None:
        assert setpriv is not None
        uid, gid = identity
        drop = [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--"]
    under_tmp = [p for p in paths if p.startswith("/tmp/")]  # hidden by the private /tmp: bound again
    # uid 0 inside (host: the dropped identity). With any other uid, bubblewrap would nest a second user namespace
    # below the one that owns the server's PID namespace, and the server could no longer re-enter its namespace
    # after forking each job into a new one.
    inner = [bwrap, "--unshare-user", "--uid", "0", "--gid", "0", "--unshare-pid", "--unshare-net",
             "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--as-pid-1", "--die-with-parent",
             "--new-session",
             "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", *inner_cgroups,
             *(arg for path in under_tmp for arg in ("--ro-bind", path, path)), "--remount-ro", "/dev",
             "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP", "--chdir", "/", "--"]
    return [*outer, "--", *drop, *inner]


def probe(argv: list[str]) -> str | None:
    """None if `argv` can start this interpreter in the sandbox, else bubblewrap's or the interpreter's words."""
    check = [*argv, sys.executable, "-S", "-c", "import os; print(os.getuid())"]
    try:
        done = subprocess.run(check, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap failed to run: {exc}"
    if done.returncode != 0:
        words = done.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {done.returncode}"]
        hint = ""
        if "setting up uid map" in words[-1] or "No permissions to creating new namespace" in words[-1] \
                or "Operation not permitted" in words[-1]:
            hint = (" (unprivileged user namespaces are off: sysctl kernel.unprivileged_userns_clone=1 on "
                    "Debian, user.max_user_namespaces > 0, or on Ubuntu 24.04 an AppArmor profile for bwrap)")
        return f"bubblewrap cannot start the sandbox here: {words[-1]}{hint}"
    return None
