"""The fork server: a long-lived process that imports and warms the math stack once, then forks a job per program.

Started by `Sandbox` as `python -m executor.server` (inside bubblewrap when the machine has it), it talks to its
caller over stdin/stdout in length-prefixed JSON frames. Job processes are forked ahead of need (`ready` of them,
at least `workers`, wait, already isolated, for their code; the pool is refilled while the server is idle), so a
job's latency is a pipe write and the job itself. Every job's status is derived here, in the parent, from how the
process ended and what the job reported.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import math
import os
import resource
import selectors
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import isolation, syscalls
from .job import SETUP_FAILED, JobSetup, job_main
from .protocol import FRAME, read_frame_blocking, write_frame

MAX_REPORT_BYTES = 8192
WARMUP = """
import numpy as np, sympy as sp
x = sp.Symbol("x")
sp.solve(x**2 - 4, x); sp.simplify(sp.sin(x)**2 + sp.cos(x)**2); sp.Rational(1, 3) + sp.Integer(2)**100
np.linalg.solve(np.eye(3), np.ones(3)); np.arange(10).sum()
"""


class Capture:
    """One output stream: the first and the last `limit // 2` bytes, and how many there were in all."""

    def __init__(self, limit: int) -> None:
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if len(self.head) < self.half:
            take = self.half - len(self.head)
            self.head += data[:take]
            data = data[take:]
        if data:
            self.tail += data
            if len(self.tail) > self.half:
                del self.tail[: len(self.tail) - self.half]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def text(self) -> str:
        if not self.truncated:
            return (self.head + self.tail).decode("utf-8", errors="replace")
        cut = self.total - len(self.head) - len(self.tail)
        return (self.head.decode("utf-8", errors="replace") + f"\n…[{cut} bytes cut]…\n"
                + self.tail.decode("utf-8", errors="replace"))


@dataclass(eq=False)
class Worker:
    pid: int
    pidfd: int
    job_w: int
    streams: dict[int, Capture]  # fd -> capture (stdout first, then stderr)
    report_r: int
    workdir: str | None
    job_id: int | None = None
    timeout_s: float = 0.0
    started: float = 0.0
    hard_deadline: float = math.inf
    killed_for: str | None = None
    report: bytearray = field(default_factory=bytearray)


class Server:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.selector = selectors.DefaultSelector()
        self.queue: deque[dict[str, Any]] = deque()
        self.idle: list[Worker] = []
        self.busy: dict[int, Worker] = {}
        self.spawn_after = 0.0
        self.idle_failures = 0
        self.inbox = bytearray()
        self.namespaced = False
        self.setup: JobSetup | None = None
        self.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY)
        self.jobs_dir: str | None = config.get("jobs_dir")  # made and removed by the caller (no namespaces)

    # --- start-up ---------------------------------------------------------------------------------------------
    def warm_up(self) -> list[str]:
        missing = []
        for name in self.config["preload"]:
            try:
                importlib.import_module(name)
            except ImportError:
                missing.append(name)
        if not {"numpy", "sympy"} & set(missing):
            exec(WARMUP, {})
        gc.collect()
        gc.freeze()  # keep the warmed objects out of the collector, so forked jobs do not copy their pages
        return missing

    def choose_isolation(self) -> dict[str, str | None]:
        """Per-job namespaces and the seccomp filter, if a probe job runs with them; for each, None or why not."""
        vm_kb = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0])
        cfg = self.config
        base = dict(tmpfs_mb=cfg["tmpfs_mb"], address_space_bytes=vm_kb * 1024 + cfg["memory_mb"] * 2**20,
                    file_size_bytes=cfg["file_size_mb"] * 2**20, open_files=cfg["open_files"],
                    nproc=cfg["nproc"], last_cap=isolation.last_capability(), workdir=None,
                    binds=tuple(cfg["tmp_binds"]))
        if not cfg["in_bwrap"]:
            self.setup = JobSetup(namespaced=False, **base)
            why = "the server does not run inside bubblewrap"
            return {"job_namespaces": why + ", so jobs cannot get namespaces of their own",
                    "seccomp": why + " (isolation: none)"}
        why_no_seccomp = syscalls.missing()
        filter_ = keyctl = None
        if why_no_seccomp is None:
            filter_, keyctl = syscalls.compile_filter(syscalls.build()), syscalls.number("keyctl")
        self.namespaced = True
        self.setup = JobSetup(namespaced=True, keyctl_nr=keyctl, seccomp=filter_, **base)
        why = self._probe()
        if why is not None:
            self.namespaced, self.setup = False, JobSetup(namespaced=False, **base)
            why_no_seccomp = why_no_seccomp or "jobs could not be set up in namespaces"
        return {"job_namespaces": why, "seccomp": why_no_seccomp}

    def _probe(self) -> str | None:
        try:
            worker = self._spawn()
        except OSError as exc:
            return f"cannot fork a job into a new PID namespace: {exc}"
        self._send(worker, {"id": -1, "code": "print(1)", "timeout_s": 10.0})
        ready = selectors.DefaultSelector()
        ready.register(worker.pidfd, selectors.EVENT_READ)
        exited = ready.select(timeout=10.0)
        ready.close()
        if not exited:
            os.kill(worker.pid, signal.SIGKILL)
        _, status = os.waitpid(worker.pid, 0)
        out, err = (self._drain_all(fd) for fd in worker.streams)
        self._close(worker)
        if status == 0 and out == b"1\n":
            return None
        lines = err.decode(errors="replace").strip().splitlines() or [f"wait status {status}"]
        return f"a job could not set up its own namespaces: {lines[-1]}"

    # --- workers ----------------------------------------------------------------------------------------------
    def _spawn(self) -> Worker:
        assert self.setup is not None
        job_r, job_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        report_r, report_w = os.pipe()
        workdir = None if self.namespaced else tempfile.mkdtemp(dir=self.jobs_dir or None)
        setup = self.setup if workdir is None else replace(self.setup, workdir=workdir)
        pid = -1
        try:
            if self.namespaced:
                isolation.unshare(isolation.CLONE_NEWPID)  # the next child is PID 1 of a new namespace
            pid = os.fork()
            if pid == 0:
                job_main(setup, job_r, out_w, err_w, report_w)
        except OSError:
            for fd in (job_r, job_w, out_r, out_w, err_r, err_w, report_r, report_w):
                os.close(fd)
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        finally:
            if self.namespaced and pid != 0:
                isolation.setns(self.pidns_fd, isolation.CLONE_NEWPID)
        for fd in (job_r, out_w, err_w, report_w):
            os.close(fd)
        for fd in (out_r, err_r, report_r):
            os.set_blocking(fd, False)
        limit = self.config["max_output_bytes"]
        return Worker(pid=pid, pidfd=os.pidfd_open(pid), job_w=job_w, report_r=report_r, workdir=workdir,
                      streams={out_r: Capture(limit), err_r: Capture(limit)})

    def _send(self, worker: Worker, job: dict[str, Any]) -> None:
        worker.job_id = job["id"]
        worker.timeout_s = float(job["timeout_s"])
        worker.started = time.monotonic()
        worker.hard_deadline = worker.started + worker.timeout_s + self.config["grace_s"]
        try:
            data = memoryview(json.dumps({"code": job["code"], "timeout_s": worker.timeout_s}).encode())
            while data:
                data = data[os.write(worker.job_w, data):]
        except BrokenPipeError:
            pass  # the job process died before reading; its exit is reported as a crash
        finally:
            os.close(worker.job_w)

    def _target(self) -> int:
        """Idle job processes to hold now: `workers` while jobs run or wait (every fork delays their results);
        the whole `ready` pool, refilled one fork per turn of the loop, once the server is idle."""
        return self.config["workers"] if self.queue or self.busy else self.config["ready"]

    def _refill(self) -> None:
        now = time.monotonic()
        while len(self.idle) < self._target() and now >= self.spawn_after:
            try:
                worker = self._spawn()
            except OSError as exc:  # EAGAIN from the process limit while a job holds many processes
                self._log(f"cannot fork a job process now ({exc}); retrying")
                self.spawn_after = now + 0.05
                return
            self.selector.register(worker.pidfd, selectors.EVENT_READ, ("exit", worker))
            self.idle.append(worker)
            if len(self.idle) >= self.config["workers"]:
                return  # past what dispatching needs: look at the pipes before the next fork

    def _dispatch(self) -> None:
        while self.queue and self.idle and len(self.busy) < self.config["workers"]:
            worker = self.idle.pop(0)
            self._send(worker, self.queue.popleft())
            self.busy[worker.pid] = worker
            for fd in worker.streams:
                self.selector.register(fd, selectors.EVENT_READ, ("stream", worker))
            self.selector.register(worker.report_r, selectors.EVENT_READ, ("report", worker))

    def _kill(self, worker: Worker, why: str) -> None:
        if worker.killed_for is None:
            worker.killed_for = why
        with contextlib.suppress(ProcessLookupError):
            if self.namespaced:
                os.kill(worker.pid, signal.SIGKILL)  # PID 1 of its namespace: the kernel kills the rest
            else:
                os.killpg(worker.pid, signal.SIGKILL)

    # --- events -----------------------------------------------------------------------------------------------
    def _on_stream(self, fd: int, worker: Worker) -> None:
        data = self._read(fd)
        if data is None:
            return
        if not data:
            self.selector.unregister(fd)
            return
        capture = worker.streams[fd]
        capture.feed(data)
        if capture.total > self.config["stop_output_bytes"]:
            self._kill(worker, "output_limit")

    def _on_report(self, fd: int, worker: Worker) -> None:
        data = self._read(fd)
        if data == b"":
            self.selector.unregister(fd)
        elif data and len(worker.report) < MAX_REPORT_BYTES:
            worker.report += data[: MAX_REPORT_BYTES - len(worker.report)]

    def _on_exit(self, worker: Worker) -> None:
        _, status = os.waitpid(worker.pid, 0)
        if worker.job_id is None:  # an idle job process died before it got any code
            self.idle.remove(worker)
            err = b"".join(self._drain_all(fd) for fd in worker.streams).decode(errors="replace").strip()
            self._close(worker)
            self.idle_failures += 1
            self._log(f"an idle job process exited (status {status}): {err[-500:]}")
            if self.idle_failures > 50:
                self._fatal(f"job processes keep dying before they run anything: {err[-500:]}")
            return
        if not self.namespaced:
            self._kill(worker, worker.killed_for or "")
            self._kill_orphans()
        for fd, capture in worker.streams.items():
            capture.feed(self._drain_all(fd))
        worker.report += self._drain_all(worker.report_r)[:MAX_REPORT_BYTES]
        del self.busy[worker.pid]
        result = derive_result(worker, status, time.monotonic() - worker.started, self.config)
        self._close(worker)
        self.idle_failures = 0
        write_frame(1, {"type": "result", "id": worker.job_id, "result": result})

    def _on_control(self) -> bool:
        data = self._read(0)
        if data is None:
            return True
        if not data:
            return False
        self.inbox += data
        while len(self.inbox) >= FRAME.size:
            (size,) = FRAME.unpack_from(self.inbox)
            if len(self.inbox) < FRAME.size + size:
                break
            message = json.loads(self.inbox[FRAME.size: FRAME.size + size])
            del self.inbox[: FRAME.size + size]
            self.queue.append(message)
        return True

    def _expire(self) -> float | None:
        """Kill jobs past their hard deadline; return the seconds until the next deadline."""
        now = time.monotonic()
        upcoming = [self.spawn_after - now] if len(self.idle) < self._target() else []
        for worker in self.busy.values():
            if worker.hard_deadline <= now:
                self._kill(worker, "timeout")
                worker.hard_deadline = math.inf  # killed: its exit, not a deadline, wakes us next
            elif worker.hard_deadline < math.inf:
                upcoming.append(worker.hard_deadline - now)
        return max(min(upcoming), 0.0) if upcoming else None

    def serve(self) -> None:
        os.set_blocking(0, False)
        self.selector.register(0, selectors.EVENT_READ, ("control", None))
        while True:
            self._dispatch()
            self._refill()
            for key, _ in self.selector.select(self._expire()):
                if self.selector.get_map().get(key.fd) is not key:
                    continue  # closed by an earlier event of this batch (its job already finished)
                kind, worker = key.data
                if kind == "control" and not self._on_control():
                    return
                if kind == "stream":
                    self._on_stream(key.fd, worker)
                elif kind == "report":
                    self._on_report(key.fd, worker)
                elif kind == "exit":
                    self._on_exit(worker)

    def shutdown(self) -> None:
        for worker in [*self.idle, *self.busy.values()]:
            self._kill(worker, "shutdown")
            with contextlib.suppress(ChildProcessError):
                os.waitpid(worker.pid, 0)
        if self.jobs_dir:
            shutil.rmtree(self.jobs_dir, ignore_errors=True)

    # --- helpers ----------------------------------------------------------------------------------------------
    @staticmethod
    def _read(fd: int) -> bytes | None:
        """The next chunk; b"" at end of stream; None when nothing is ready (a spurious wake-up)."""
        try:
            return os.read(fd, 1 << 16)
        except BlockingIOError:
            return None

    def _drain_all(self, fd: int) -> bytes:
        chunks = []
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        return b"".join(chunks)

    def _close(self, worker: Worker) -> None:
        for fd in [*worker.streams, worker.report_r, worker.pidfd]:
            if fd in self.selector.get_map():
                self.selector.unregister(fd)
            os.close(fd)
        if worker.job_id is None:
            with contextlib.suppress(OSError):
                os.close(worker.job_w)
        if worker.workdir:
            shutil.rmtree(worker.workdir, ignore_errors=True)

    def _kill_orphans(self) -> None:
        """Without PID namespaces, a job's setsid grandchildren are re-parented to us (a subreaper): kill them."""
        known = {w.pid for w in [*self.idle, *self.busy.values()]}
        me = os.getpid()
        for _ in range(20):
            orphans = [pid for pid in _children(me) if pid not in known]
            if not orphans:
                return
            for pid in orphans:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)

    @staticmethod
    def _log(message: str) -> None:
        print(f"delegate sandbox server: {message}", file=sys.stderr, flush=True)

    def _fatal(self, message: str) -> None:
        write_frame(1, {"type": "fatal", "error": message})
        self.shutdown()
        os._exit(1)


def _children(pid: int) -> list[int]:
    """The children of `pid`: its threads' `children` lists (one read each), else a scan of every process's stat
    (kernels without `CONFIG_PROC_CHILDREN`), which costs a read per process and is slow with a large `ready` pool."""
    try:
        return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    except FileNotFoundError:
        pass
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def derive_result(worker: Worker, wait_status: int, duration_s: float, config: dict[str, Any]) -> dict[str, Any]:
    """The job's status and one-line error, from how it ended (decided here, not by the job)."""
    out, err = (capture for capture in worker.streams.values())
    report = _parse_report(worker.report)
    exit_code = os.waitstatus_to_exitcode(wait_status)
    sig = signal.Signals(-exit_code).name if exit_code < 0 else None
    at_line = f" (line {report['line']})" if report.get("line") else ""
    timeout = f"TimeLimitExceeded: time limit of {worker.timeout_s:g} s exceeded"
    if worker.killed_for == "timeout":
        status, error = "timeout", timeout + "; the job did not stop and was killed"
    elif worker.killed_for == "output_limit":
        status, error = "output_limit", f"output limit: more than {config['stop_output_bytes']} bytes; stopped"
    elif sig == "SIGXCPU":
        status, error = "timeout", timeout + " (CPU time)"
    elif sig is not None:
        status, error = "crashed", f"crashed: killed by {sig}"
    elif report.get("timeout"):
        status, error = "timeout", report["summary"] + at_line
    elif report.get("memory"):
        status, error = "memory", f"{report['summary']}{at_line} (limit {config['memory_mb']} MB)"
    elif exit_code == SETUP_FAILED and not report and out.total == 0:
        status, error = "crashed", "crashed: the sandbox could not set up the job: " + _last_line(err.text())
    elif out.truncated or err.truncated:
        status = "output_limit"
        stream, cap = ("stdout", out) if out.truncated else ("stderr", err)
        error = f"output limit: {stream} was {cap.total} bytes, cut to {config['max_output_bytes']}"
    elif exit_code != 0:
        status = "error"
        error = report["summary"] + at_line if report.get("summary") else f"exit code {exit_code}"
        if not report and (last := _last_line(err.text())):
            error += f": {last}"
    else:
        status, error = "ok", None
    return {"status": status, "stdout": out.text(), "stderr": err.text(), "error": error,
            "duration_s": round(duration_s, 6), "exit_code": exit_code if exit_code >= 0 else None, "signal": sig}


def _parse_report(data: bytearray) -> dict[str, Any]:
    try:
        report = json.loads(data.decode(errors="replace"))
    except ValueError:
        return {}  # nothing reported, or the job wrote over its own report channel
    return report if isinstance(report, dict) else {}


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the caller, which closes us
    config = read_frame_blocking(0)
    _, most = resource.getrlimit(resource.RLIMIT_NOFILE)  # five descriptors for each job process, idle or busy
    if most != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (most, most))
    if not config["in_bwrap"]:
        isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the caller
        isolation.prctl(isolation.PR_SET_CHILD_SUBREAPER, 1)  # catch the jobs' escaped grandchildren
    with contextlib.suppress(OSError):  # the OOM killer takes the sandbox's processes (jobs inherit) first
        Path("/proc/self/oom_score_adj").write_text("1000")
    server = Server(config)
    missing = server.warm_up()
    why_not = server.choose_isolation()
    if server.setup is not None and server.setup.keyctl_nr is not None:
        isolation.join_new_session_keyring(server.setup.keyctl_nr)  # nothing of the caller's session, even here
    write_frame(1, {"type": "hello", **why_not, "preload_missing": missing})
    try:
        server.serve()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
