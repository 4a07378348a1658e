"""What runs inside one job's process: isolate, wait for the code, run it under a soft deadline, exit.

A job process is forked from the warmed server before its code is known, so the isolation work is off the
critical path. It never returns into the server's code: every path ends in `os._exit`.
"""

from __future__ import annotations

import builtins
import fcntl
import io
import json
import linecache
import math
import os
import resource
import signal
import sys
import traceback
from dataclasses import dataclass
from typing import Any, NoReturn

from . import isolation, syscalls

JOB_FILENAME = "<job>"
JOB_DIR = "/tmp/delegate-job"  # a job's working directory, on its private tmpfs
SETUP_FAILED = 121  # exit code of a job process whose isolation could not be set up
JOB_FD, REPORT_FD = 3, 4
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_OWN_STREAMS: list[Any] = []  # the job's stdout and stderr as set up here, flushed at the end whatever it did


class TimeLimitExceeded(BaseException):
    """Raised inside the job at its soft deadline. A BaseException, so `except Exception` does not swallow it."""


TimeLimitExceeded.__module__ = "builtins"  # tracebacks then name it plainly, as the planner should read it


@dataclass(frozen=True)
class JobSetup:
    namespaced: bool
    tmpfs_mb: int
    address_space_bytes: int
    file_size_bytes: int
    open_files: int
    nproc: int | None
    last_cap: int
    workdir: str | None  # the job's directory when it has no private tmpfs
    binds: tuple[str, ...] = ()  # host paths under /tmp (a checkout, a virtualenv) to bind back read-only
    keyctl_nr: int | None = None  # the keyctl system call's number: each job gets a fresh session keyring
    seccomp: bytes | None = None  # the compiled filter (`executor.syscalls`), loaded at the end of the setup
    cgroup_procs: tuple[str, ...] = ()  # the `cgroup.procs` of this job's own groups (its slot), to join first


def job_main(setup: JobSetup, job_r: int, out_w: int, err_w: int, report_w: int) -> NoReturn:
    """Entry point of a freshly forked job process; never returns."""
    code = SETUP_FAILED
    try:
        _isolate(setup)
        _redirect(job_r, out_w, err_w, report_w)
        _limit(setup)  # after the inherited descriptors are closed: the server holds more than a job may open
        if setup.seccomp is not None:
            syscalls.install(setup.seccomp)  # last: the setup above needs mount, unshare and keyctl
    except BaseException:  # noqa: BLE001 - any failure here must end this process, never the server
        _last_words(err_w)
        os._exit(SETUP_FAILED)
    try:
        message = json.loads(_read_all(JOB_FD))
        os.close(JOB_FD)
        code = _run(message["code"], float(message["timeout_s"]))
    except BaseException:  # noqa: BLE001 - the job's own failures were handled in _run; this is ours
        _last_words(2)
    finally:
        os._exit(code)


def _isolate(setup: JobSetup) -> None:
    os.setsid()
    isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
    if setup.namespaced:
        # Its own mount, IPC (SysV and POSIX message queues) and UTS (hostname) namespaces: nothing a job leaves
        # there outlives it. (The PID namespace was made by the server, before the fork.)
        isolation.unshare(isolation.CLONE_NEWNS | isolation.CLONE_NEWIPC | isolation.CLONE_NEWUTS)
        isolation.mount("none", "/", None, isolation.MS_REC | isolation.MS_PRIVATE)
        nosuid_nodev = isolation.MS_NOSUID | isolation.MS_NODEV
        # Into its own memory and pids groups before it allocates or forks anything of its own. They are under
        # /tmp, which the job's own tmpfs covers below: no way back to the other slots (a job without
        # capabilities cannot unmount it).
        for procs in setup.cgroup_procs:
            with open(procs, "w") as file:
                file.write("0")
        isolation.mount("proc", "/proc", "proc", nosuid_nodev | isolation.MS_NOEXEC)
        isolation.mount("/proc/sys", "/proc/sys", None, isolation.MS_BIND | isolation.MS_REC)
        isolation.mount("none", "/proc/sys", None, isolation.MS_BIND | isolation.MS_REMOUNT | isolation.MS_RDONLY
                        | nosuid_nodev | isolation.MS_NOEXEC)
        # The new /tmp hides what the interpreter needs there; fds opened first (in this mount namespace, as
        # bind mounts require) still reach the read-only originals.
        hidden = [(path, os.open(path, os.O_PATH)) for path in setup.binds]
        isolation.mount("tmpfs", "/tmp", "tmpfs", nosuid_nodev, f"size={setup.tmpfs_mb}m,mode=0700")
        for path, fd in hidden:
            os.makedirs(path, exist_ok=True)
            isolation.mount(f"/proc/self/fd/{fd}", path, None, isolation.MS_BIND | isolation.MS_REC)
            os.close(fd)
        isolation.mount("tmpfs", "/dev/shm", "tmpfs", nosuid_nodev, f"size={setup.tmpfs_mb}m,mode=1777")
        os.mkdir(JOB_DIR)
        os.chdir(JOB_DIR)
        isolation.sethostname("sandbox")
        if setup.keyctl_nr is not None:
            isolation.join_new_session_keyring(setup.keyctl_nr)
        isolation.drop_capabilities(setup.last_cap)
    else:
        assert setup.workdir is not None
        os.chdir(setup.workdir)
    home = os.getcwd()
    os.environ.clear()
    os.environ.update(PATH=_SAFE_PATH, HOME=home, TMPDIR=home, LANG="C.UTF-8", OPENBLAS_NUM_THREADS="1",
                      OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _limit(setup: JobSetup) -> None:
    limits = {
        resource.RLIMIT_AS: setup.address_space_bytes,
        resource.RLIMIT_FSIZE: setup.file_size_bytes,
        resource.RLIMIT_NOFILE: setup.open_files,
        resource.RLIMIT_CORE: 0,
    }
    if setup.nproc is not None:
        limits[resource.RLIMIT_NPROC] = setup.nproc
    for which, value in limits.items():
        _lower_limit(which, value)


def _lower_limit(which: int, value: int) -> None:
    """Set soft and hard limit to `value`, never above the current hard limit (raising it is not allowed)."""
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _redirect(job_r: int, out_w: int, err_w: int, report_w: int) -> None:
    """fd 0 is /dev/null, 1 and 2 are the output pipes, 3 the job message, 4 the report; nothing else is open."""
    null = os.open(os.devnull, os.O_RDONLY)
    # Move the pipes above 4 first so that the dup2 below cannot overwrite one of them.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (job_r, out_w, err_w, report_w)]
    os.dup2(null, 0)
    for target, fd in zip((JOB_FD, 1, 2, REPORT_FD), high, strict=True):
        os.dup2(fd, target, inheritable=target in (0, 1, 2))
    os.closerange(REPORT_FD + 1, 1 << 20)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    _OWN_STREAMS[:] = [sys.stdout, sys.stderr]


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _run(code: str, timeout_s: float) -> int:
    """Run the code as `__main__`; return the exit code. Exceptions are printed and reported, not raised."""

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeLimitExceeded(f"time limit of {timeout_s:g} s exceeded")

    linecache.cache[JOB_FILENAME] = (len(code), None, code.splitlines(True), JOB_FILENAME)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError instead of killing
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGALRM, on_alarm)
    cpu = math.ceil(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    sys.set_int_max_str_digits(0)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    exit_code = 0
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        exec(compile(code, JOB_FILENAME, "exec"), namespace)
    except SystemExit as exc:
        signal.setitimer(signal.ITIMER_REAL, 0)
        exit_code = _exit_code(exc)
    except BaseException as exc:  # noqa: BLE001 - every failure of the job is its result
        signal.setitimer(signal.ITIMER_REAL, 0)
        exit_code = 1
        _report_exception(exc)
    signal.setitimer(signal.ITIMER_REAL, 0)
    for stream in {id(s): s for s in (sys.stdout, sys.stderr, *_OWN_STREAMS)}.values():
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - the job replaced, closed or broke its stream (None, an object
            pass  # without flush): what it wrote through ours is flushed by the loop's other turns
    return exit_code


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def _report_exception(exc: BaseException) -> None:
    """Print the traceback without the sandbox's own frame, and tell the server what kind of failure it was."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    try:
        traceback.print_exception(type(exc), exc, tb)
    except Exception:  # noqa: BLE001 - the job closed or replaced stderr (None); the report below still goes
        pass
    line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
    for frame, lineno in traceback.walk_tb(tb):
        if frame.f_code.co_filename == JOB_FILENAME:
            line = lineno
    summary = traceback.format_exception_only(type(exc), exc)[-1].strip()
    report = {"type": type(exc).__name__, "summary": summary[:500], "line": line,
              "memory": isinstance(exc, MemoryError), "timeout": isinstance(exc, TimeLimitExceeded)}
    try:
        os.write(REPORT_FD, json.dumps(report).encode())
    except OSError:
        pass  # the job closed its report channel; the server falls back to the exit code


def _last_words(fd: int) -> None:
    try:
        os.write(fd, traceback.format_exc().encode(errors="replace"))
    except OSError:
        pass
