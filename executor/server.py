"""The fork server: a long-lived process that imports and warms the math stack once, then forks a job per program.

Started by `Sandbox` as `python -m executor.server` (inside bubblewrap when the machine has it), it talks to its
caller over stdin/stdout in length-prefixed JSON frames. Job processes are forked ahead of need (`ready` of them,
at least `workers`, wait, already isolated, for their code; the pool is refilled while the server is idle), so a
job's latency is a pipe write and the job itself. They are forked not by the server, which holds every job's code
and output, but by the zygote (`executor.zygote`), a template forked from the server before the first job arrived
that never receives any job's data. Every job's status is derived here, in the parent, from what the
server itself observed: how the process ended, its own timers and kills, the output it read and bounded. What a job
writes on its report channel only supplies words for the error line (see `parse_report`), and an error while
handling one job ends as that job's `crashed`, never as the server's.
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
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import isolation, syscalls, zygote
from .cgroup import oom_kills
from .job import SETUP_FAILED, JobSetup
from .protocol import FRAME, read_frame_blocking, write_frame

MAX_REPORT_BYTES = 8192
MAX_SUMMARY_CHARS = 500
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
    failure: str | None = None  # the server's own error while handling this job: its result is `crashed`
    memory_group: str | None = None  # the job's own memory cgroup (its slot), where it has one
    oom_kills: int = 0  # that group's OOM kills before the job


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
        self.by_pid: dict[int, Worker] = {}  # every job process the zygote handed over and has not yet reaped
        self.requested = 0  # job processes asked of the zygote and not yet handed over
        self.zygote_pid: int | None = None
        self.zygote: socket.socket | None = None

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
        """Run one job forked by the server itself: before any job arrives, and before the zygote exists."""
        assert self.setup is not None
        try:
            worker = self._worker(zygote.spawn_job(self.setup, self.namespaced, self.pidns_fd, self.jobs_dir))
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

    def start_zygote(self) -> None:
        """Fork the template that every job process is forked from: now, before the first job is read."""
        assert self.setup is not None
        cgroups = (self.config.get("job_cgroups") or {}) if self.namespaced else {}
        self.zygote_pid, self.zygote = zygote.start(self.setup, self.namespaced, self.pidns_fd, self.jobs_dir,
                                                    cgroups, self.config.get("job_slots", 0))

    # --- workers ----------------------------------------------------------------------------------------------
    def _worker(self, job: zygote.Spawned) -> Worker:
        for fd in (job.out_r, job.err_r, job.report_r):
            os.set_blocking(fd, False)
        limit = self.config["max_output_bytes"]
        return Worker(pid=job.pid, pidfd=job.pidfd, job_w=job.job_w, report_r=job.report_r, workdir=job.workdir,
                      streams={job.out_r: Capture(limit), job.err_r: Capture(limit)})

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
        """Ask the zygote for the job processes still missing (it forks them while we go on)."""
        assert self.zygote is not None
        wanted = self._target() - len(self.idle) - self.requested
        if wanted > 0 and time.monotonic() >= self.spawn_after:
            self.zygote.send(zygote.SPAWN * wanted)
            self.requested += wanted

    def _on_zygote(self) -> None:
        """Job processes handed over, fork failures, and exits, in the order the zygote saw them."""
        assert self.zygote is not None
        while True:
            try:
                received = zygote.receive(self.zygote)
            except EOFError as exc:
                self._fatal(str(exc))
            if received is None:
                return
            message, fds = received
            if "spawned" in message:
                self.requested -= 1
                pidfd, job_w, out_r, err_r, report_r = fds
                worker = self._worker(zygote.Spawned(message["spawned"], pidfd, job_w, out_r, err_r, report_r,
                                                     message["workdir"]))
                if message.get("slot") is not None and "memory" in (self.config.get("job_cgroups") or {}):
                    worker.memory_group = f"{self.config['job_cgroups']['memory']}/slot-{message['slot']}"
                    worker.oom_kills = oom_kills(worker.memory_group)
                self.by_pid[worker.pid] = worker
                self.idle.append(worker)
            elif "fork_failed" in message:
                self.requested -= 1
                self._log(f"cannot fork a job process now ({message['fork_failed']}); retrying")
                self.spawn_after = time.monotonic() + 0.05
            elif "exited" in message and (worker := self.by_pid.pop(message["exited"], None)) is not None:
                self._on_exit(worker, message["status"])

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
        # Through the pidfd: never another process that reused the pid. Namespaced, the job is PID 1 of its
        # namespace and the kernel kills the rest; else the zygote kills its session when it reaps it.
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(worker.pidfd, signal.SIGKILL)

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
        elif data:
            _append_bounded(worker.report, data)

    def _on_failure(self, worker: Worker, exc: Exception) -> None:
        """The server failed while handling one job's events: kill that job, stop reading from it, and let its
        exit be reported as `crashed`. The other jobs and the server go on."""
        if worker.failure is None:
            worker.failure = f"{type(exc).__name__}: {exc}"[:MAX_SUMMARY_CHARS]
        for fd in [*worker.streams, worker.report_r]:
            if fd in self.selector.get_map():
                self.selector.unregister(fd)
        self._kill(worker, "failure")

    def _on_exit(self, worker: Worker, status: int) -> None:
        if worker.job_id is None:  # an idle job process died before it got any code
            self.idle.remove(worker)
            err = b"".join(self._drain_all(fd) for fd in worker.streams).decode(errors="replace").strip()
            self._close(worker)
            self.idle_failures += 1
            self._log(f"an idle job process exited (status {status}): {err[-500:]}")
            if self.idle_failures > 50:
                self._fatal(f"job processes keep dying before they run anything: {err[-500:]}")
            return
        duration = time.monotonic() - worker.started
        try:
            if worker.failure is None:
                for fd, capture in worker.streams.items():
                    capture.feed(self._drain_all(fd))
                _append_bounded(worker.report, self._drain_all(worker.report_r))
            if worker.failure is not None:
                raise RuntimeError(worker.failure)
            oom = worker.memory_group is not None and oom_kills(worker.memory_group) > worker.oom_kills
            result = derive_result(worker, status, duration, self.config, oom_killed=oom)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong here is this job's result, not our end
            why = worker.failure or f"{type(exc).__name__}: {exc}"[:MAX_SUMMARY_CHARS]
            self._log(f"job {worker.job_id}: the server failed handling it: {why}")
            result = {"status": "crashed", "stdout": "", "stderr": "", "duration_s": round(duration, 6),
                      "error": f"crashed: the sandbox failed handling this job ({why})", "exit_code": None,
                      "signal": None}
        self.busy.pop(worker.pid, None)
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
        waiting = len(self.idle) + self.requested < self._target() and self.spawn_after > now
        upcoming = [self.spawn_after - now] if waiting else []  # a refill put off after a failed fork
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
        assert self.zygote is not None
        self.selector.register(self.zygote, selectors.EVENT_READ, ("zygote", None))
        while True:
            self._dispatch()
            self._refill()
            for key, _ in self.selector.select(self._expire()):
                if self.selector.get_map().get(key.fd) is not key:
                    continue  # closed by an earlier event of this batch (its job already finished)
                kind, worker = key.data
                if kind == "control" and not self._on_control():
                    return
                try:
                    if kind == "stream":
                        self._on_stream(key.fd, worker)
                    elif kind == "report":
                        self._on_report(key.fd, worker)
                except Exception as exc:  # noqa: BLE001 - one job's events must never end the server
                    self._on_failure(worker, exc)
                if kind == "zygote":
                    self._on_zygote()

    def shutdown(self) -> None:
        for worker in [*self.idle, *self.busy.values()]:
            self._kill(worker, "shutdown")
        if self.zygote is not None:  # it kills and reaps what is left of its jobs, then exits
            self.zygote.close()
            self.zygote = None
        if self.zygote_pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.zygote_pid, 0)
            self.zygote_pid = None
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
            with contextlib.suppress(OSError):
                os.close(fd)
        if worker.job_id is None:
            with contextlib.suppress(OSError):
                os.close(worker.job_w)
        if worker.workdir:
            shutil.rmtree(worker.workdir, ignore_errors=True)

    @staticmethod
    def _log(message: str) -> None:
        print(f"delegate sandbox server: {message}", file=sys.stderr, flush=True)

    def _fatal(self, message: str) -> None:
        write_frame(1, {"type": "fatal", "error": message})
        self.shutdown()
        os._exit(1)


@dataclass(frozen=True)
class Report:
    """What a job's runtime said about the exception that ended it: words for the error line, never a status.

    The report channel is writable by the job's own code, so anything on it may be forged: it is read bounded,
    parsed defensively, and each field kept only if it has the expected type and size.
    """

    kind: str | None = None  # the exception's class name
    summary: str | None = None  # its last traceback line, one line, at most MAX_SUMMARY_CHARS
    line: int | None = None  # the failing line of the job's code


def parse_report(data: bytes) -> Report:
    """The report in `data`, or an empty `Report` for anything malformed (wrong keys, types, nesting, size)."""
    text = bytes(data[:MAX_REPORT_BYTES]).decode("utf-8", errors="replace")
    if not text.lstrip().startswith("{"):
        return Report()
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, an over-long number, or nesting past the parser's depth
        return Report()
    if not isinstance(raw, dict):
        return Report()
    kind, summary, line = raw.get("type"), raw.get("summary"), raw.get("line")
    return Report(kind=kind[:100] if isinstance(kind, str) and kind.isidentifier() else None,
                  summary=_one_line(summary) if isinstance(summary, str) and summary.strip() else None,
                  line=line if type(line) is int and 0 < line < 1 << 31 else None)


def _one_line(text: str) -> str:
    """`text` on one line, bounded, with no lone surrogates (which JSON allows and UTF-8 does not)."""
    flat = " ".join(text.split())[:MAX_SUMMARY_CHARS]
    return flat.encode("utf-8", errors="replace").decode("utf-8")


def _append_bounded(buffer: bytearray, data: bytes) -> None:
    if len(buffer) < MAX_REPORT_BYTES:
        buffer += data[: MAX_REPORT_BYTES - len(buffer)]


def derive_result(worker: Worker, wait_status: int, duration_s: float, config: dict[str, Any],
                  oom_killed: bool = False) -> dict[str, Any]:
    """The job's status and one-line error, from what the server observed: how the process ended, the server's
    own kills and timers, the OOM kills in the job's own memory cgroup (`oom_killed`), and the output it read.
    The report only names the exception: `timeout` needs the server's clock past the deadline, `memory` a failing
    exit with a `MemoryError` (which any program may raise itself, so naming it grants nothing a job could not
    have by one line of code) or an OOM kill in the job's own group."""
    out, err = (capture for capture in worker.streams.values())
    report = parse_report(worker.report)
    exit_code = os.waitstatus_to_exitcode(wait_status)
    sig = signal.Signals(-exit_code).name if exit_code < 0 else None
    at_line = f" (line {report.line})" if report.line else ""
    timeout = f"TimeLimitExceeded: time limit of {worker.timeout_s:g} s exceeded"
    failed = exit_code > 0
    if worker.killed_for == "timeout":
        status, error = "timeout", timeout + "; the job did not stop and was killed"
    elif worker.killed_for == "output_limit":
        status, error = "output_limit", f"output limit: more than {config['stop_output_bytes']} bytes; stopped"
    elif sig == "SIGXCPU":
        status, error = "timeout", timeout + " (CPU time)"
    elif sig == "SIGKILL" and oom_killed:
        status = "memory"
        error = (f"MemoryError: the job's memory (files in /tmp and /dev/shm, pipes and sockets included) passed "
                 f"its limit of {config['memory_mb']} MB and the kernel killed it")
    elif sig is not None:
        status, error = "crashed", f"crashed: killed by {sig}"
    elif failed and report.kind == "TimeLimitExceeded" and duration_s >= worker.timeout_s:
        status, error = "timeout", timeout + at_line
    elif failed and report.kind == "MemoryError":
        status, error = "memory", f"{report.summary or 'MemoryError'}{at_line} (limit {config['memory_mb']} MB)"
    elif exit_code == SETUP_FAILED and report == Report() and out.total == 0:
        status, error = "crashed", "crashed: the sandbox could not set up the job: " + _last_line(err.text())
    elif out.truncated or err.truncated:
        status = "output_limit"
        stream, cap = ("stdout", out) if out.truncated else ("stderr", err)
        error = f"output limit: {stream} was {cap.total} bytes, cut to {config['max_output_bytes']}"
    elif exit_code != 0:
        status = "error"
        error = report.summary + at_line if report.summary else f"exit code {exit_code}"
        if report.summary is None and (last := _last_line(err.text())):
            error += f": {last}"
    else:
        status, error = "ok", None
    return {"status": status, "stdout": out.text(), "stderr": err.text(), "error": error,
            "duration_s": round(duration_s, 6), "exit_code": exit_code if exit_code >= 0 else None, "signal": sig}


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
    with contextlib.suppress(OSError):  # the OOM killer takes the sandbox's processes (jobs inherit) first
        Path("/proc/self/oom_score_adj").write_text("1000")
    server = Server(config)
    missing = server.warm_up()
    why_not = server.choose_isolation()
    if server.setup is not None and server.setup.keyctl_nr is not None:
        isolation.join_new_session_keyring(server.setup.keyctl_nr)  # nothing of the caller's session, even here
    server.start_zygote()  # before the hello: no job can have been sent yet
    write_frame(1, {"type": "hello", **why_not, "preload_missing": missing})
    try:
        server.serve()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
