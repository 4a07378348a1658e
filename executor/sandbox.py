"""`Sandbox`: the caller's handle on the fork server. Runs untrusted Python, never in the caller's process.

```python
with Sandbox(SandboxConfig(timeout_s=5.0)) as sandbox:
    sandbox.run("print(2**100)").stdout          # '1267650600228229401496703205376\\n'
    sandbox.run_many(codes)                       # parallel over `workers` processes, order kept
    running = sandbox.start_many(codes)           # the same, without waiting: running.results() waits
```
The server is a fresh interpreter (`subprocess`, i.e. fork+exec: never a fork of a process that may hold CUDA).
If it dies or stops answering, the jobs in flight come back as `crashed` and the next call starts a new one.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import Future
from typing import IO, Any

from executor import isolation
from executor.config import SandboxConfig
from executor.protocol import FRAME, encode
from executor.result import ExecutionResult

log = logging.getLogger(__name__)

STALL_MARGIN_S = 10.0  # beyond timeout + grace, how long a silent server with work in flight may take
_warned: set[str] = set()
_bwrap_probe: dict[str | None, str | None] = {}


def _empty_program() -> Future[ExecutionResult]:
    """An empty program is an error the planner should see (a coder that wrote nothing), not a silent success."""
    future: Future[ExecutionResult] = Future()
    future.set_result(ExecutionResult(status="error", error="no code to run: the program is empty"))
    return future


class SandboxError(RuntimeError):
    """The sandbox cannot start (or cannot start with the isolation the config requires)."""


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


class _Connection:
    """One running server process: frames out, a reader thread routing results to futures."""

    def __init__(self, argv: list[str], env: dict[str, str], config: dict[str, Any]) -> None:
        """Starts the server without waiting for it; `wait_ready` waits."""
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, close_fds=True, start_new_session=True)
        except OSError as exc:
            raise SandboxError(f"cannot start the sandbox server ({argv[0]}): {exc}") from exc
        self.pending: dict[int, Future[ExecutionResult]] = {}
        self.lock = threading.Lock()
        self.alive = True
        self.last_heard = time.monotonic()
        self.hello: Future[dict[str, Any]] = Future()
        threading.Thread(target=self._log_stderr, daemon=True, name="sandbox-stderr").start()
        self.send(config)
        threading.Thread(target=self._read_results, daemon=True, name="sandbox-reader").start()

    def wait_ready(self, start_timeout_s: float) -> None:
        try:
            self.hello_message = self.hello.result(timeout=start_timeout_s)
        except TimeoutError as exc:
            self.close()
            raise SandboxError(f"the sandbox server did not start within {start_timeout_s} s") from exc
        if self.hello_message.get("type") != "hello":
            self.close()
            raise SandboxError(f"the sandbox server failed to start: {self.hello_message.get('error')}")

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        with self.lock:
            self.proc.stdin.write(encode(message))
            self.proc.stdin.flush()

    def submit(self, job_id: int, code: str, timeout_s: float) -> Future[ExecutionResult]:
        future: Future[ExecutionResult] = Future()
        with self.lock:
            if not self.alive:
                future.set_result(ExecutionResult.crashed("the sandbox server is not running"))
                return future
            self.pending[job_id] = future
        try:
            self.send({"id": job_id, "code": code, "timeout_s": timeout_s})
        except (BrokenPipeError, OSError, ValueError):
            self._fail_pending("the sandbox server died")
        return future

    def _read_results(self) -> None:
        stream: IO[bytes] | None = self.proc.stdout
        assert stream is not None
        while True:
            header = stream.read(FRAME.size)
            if len(header) < FRAME.size:
                break
            (size,) = FRAME.unpack(header)
            body = stream.read(size)
            if len(body) < size:
                break
            self.last_heard = time.monotonic()
            message = json.loads(body)
            if message["type"] == "result":
                with self.lock:
                    future = self.pending.pop(message["id"], None)
                if future is not None:
                    future.set_result(ExecutionResult.from_dict(message["result"]))
            elif not self.hello.done():
                self.hello.set_result(message)
            elif message["type"] == "fatal":
                log.error("sandbox server: %s", message["error"])
        code = self.proc.wait()
        reason = f"the sandbox server died (exit status {code})"
        if not self.hello.done():
            self.hello.set_result({"type": "fatal", "error": reason})
        self._fail_pending(reason)

    def _log_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            log.warning("%s", line.decode(errors="replace").rstrip())

    def _fail_pending(self, reason: str) -> None:
        with self.lock:
            self.alive = False
            pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_result(ExecutionResult.crashed(reason))

    def abort(self, reason: str) -> None:
        """Kill the server and fail every job it holds; the next call starts a new one."""
        self.proc.kill()
        self._fail_pending(reason)

    def stalled(self, limit_s: float) -> bool:
        with self.lock:
            busy = bool(self.pending)
        return busy and time.monotonic() - self.last_heard > limit_s

    def close(self, timeout_s: float = 5.0) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass  # already broken: the server is gone
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._fail_pending("the sandbox was closed")


class Sandbox:
    """Runs untrusted Python programs in isolated, pre-forked processes of a warmed server.

    Bad code never raises here: it comes back as an `ExecutionResult` with a status. Only a sandbox that cannot
    start at all (or lacks isolation that `require_isolation` demands) raises `SandboxError`.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.layers = isolation.Layers()
        self.restarts = 0
        self._conns: list[_Connection | None] = [None] * self.config.server_count
        self._cgroups: list[isolation.PidsCgroup | None] = [None] * self.config.server_count
        self._ids = itertools.count()
        self._start_lock = threading.Lock()

    # --- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> Sandbox:
        """Start the servers, or restart any that died."""
        with self._start_lock:
            missing = []
            for index, conn in enumerate(self._conns):
                if conn is None or not conn.alive:
                    if conn is not None:
                        self.restarts += 1
                        log.warning("restarting a sandbox server (restart %d)", self.restarts)
                        self._stop(index)
                    missing.append(index)
            # Started here, in the caller's thread (a server dies with the thread that started it), then waited
            # for together: each imports and warms the math stack, side by side.
            started, failures = [], []
            for index in missing:
                try:
                    started.append((index, *self._launch(index)))
                except SandboxError as exc:
                    failures.append(exc)
            for index, conn, layers in started:
                try:
                    self._conns[index] = self._ready(index, conn, layers)
                except SandboxError as exc:
                    failures.append(exc)
            if failures:
                raise failures[0]
        return self

    def close(self) -> None:
        with self._start_lock:
            for index in range(len(self._conns)):
                self._stop(index)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        for index, conn in enumerate(getattr(self, "_conns", [])):
            if conn is not None:
                self._stop(index)

    @property
    def server_pid(self) -> int | None:
        """The pid of the outermost process of the (first) server (bwrap's, when it runs inside bubblewrap)."""
        return self.server_pids[0] if self.server_pids else None

    @property
    def server_pids(self) -> list[int]:
        return [conn.proc.pid for conn in self._conns if conn is not None]

    def _launch(self, index: int) -> tuple[_Connection, isolation.Layers]:
        cfg = self.config
        layers = isolation.Layers(present=["rlimits"])
        bwrap = shutil.which("bwrap")
        if bwrap not in _bwrap_probe:
            _bwrap_probe[bwrap] = isolation.probe_bwrap(bwrap)
        why_no_bwrap = _bwrap_probe[bwrap]
        command, env = isolation.server_command()
        tmp_binds: list[str] = []
        if why_no_bwrap is None and bwrap is not None:
            layers.present.append("bubblewrap")
            tmp_binds = isolation.interpreter_paths_under_tmp()
            command = isolation.bwrap_argv(bwrap, tmp_binds) + command
        else:
            layers.missing["bubblewrap"] = why_no_bwrap or "not found"
        cgroup = isolation.PidsCgroup.create(cfg.max_processes // cfg.server_count,
                                             f"delegate-sandbox-{os.getpid()}-{id(self)}-{index}")
        self._cgroups[index] = cgroup
        nproc = None
        if cgroup is not None:
            layers.present.append("process_limit")
            command = cgroup.wrap(command)
        elif os.getuid() != 0:
            layers.present.append("process_limit")
            nproc = cfg.max_processes
        else:
            layers.missing["process_limit"] = ("no writable pids cgroup, and RLIMIT_NPROC does not bind root: "
                                               "a job may start processes until its deadline")
        server_config = {**cfg.model_dump(mode="json"), "workers": cfg.workers_of(index), "ready": cfg.ready_of(index),
                         "in_bwrap": "bubblewrap" in layers.present, "nproc": nproc, "tmp_binds": tmp_binds}
        return _Connection(command, env, server_config), layers

    def _ready(self, index: int, conn: _Connection, layers: isolation.Layers) -> _Connection:
        cfg = self.config
        try:
            conn.wait_ready(cfg.start_timeout_s)
        except SandboxError:
            self._remove_cgroup(index)
            raise
        why_no_ns = conn.hello_message.get("job_namespaces")
        if why_no_ns:
            layers.missing["job_namespaces"] = why_no_ns
        else:
            layers.present.append("job_namespaces")
        if conn.hello_message.get("preload_missing"):
            _warn_once(f"sandbox: could not preload {', '.join(conn.hello_message['preload_missing'])}")
        self.layers = layers
        if layers.missing:
            message = f"sandbox runs without some isolation: {layers.describe_missing()}"
            if cfg.require_isolation:
                conn.close()
                self._remove_cgroup(index)
                raise SandboxError(message + " (require_isolation is set)")
            _warn_once(message)
        return conn

    def _stop(self, index: int) -> None:
        conn = self._conns[index]
        if conn is not None:
            conn.close()
            self._conns[index] = None
        self._remove_cgroup(index)

    def _remove_cgroup(self, index: int) -> None:
        cgroup = self._cgroups[index]
        if cgroup is not None:
            cgroup.remove()
            self._cgroups[index] = None

    # --- running ----------------------------------------------------------------------------------------------
    def run(self, code: str, timeout_s: float | None = None) -> ExecutionResult:
        """Run one program; see `run_many`."""
        return self.run_many([code], timeout_s)[0]

    def run_many(self, codes: list[str], timeout_s: float | None = None) -> list[ExecutionResult]:
        """Run programs in parallel (up to `workers` at once); results in the order of `codes`."""
        return self.start_many(codes, timeout_s).results()

    def start_many(self, codes: list[str], timeout_s: float | None = None) -> Running:
        """Hand programs to the server and return at once; `results()` waits for them. The caller can do other
        work (write the next programs) while these run."""
        if not codes:
            return Running([], 0.0)
        self.start()
        conns = [conn for conn in self._conns if conn is not None]
        timeout = timeout_s if timeout_s is not None else self.config.timeout_s
        jobs = []
        for index, code in enumerate(codes):  # spread over the servers, one job each in turn
            conn = conns[index % len(conns)]
            jobs.append((conn.submit(next(self._ids), code, timeout) if code.strip() else _empty_program(), conn))
        return Running(jobs, timeout + self.config.grace_s + STALL_MARGIN_S)


class Running:
    """Programs handed to the sandbox's servers (`Sandbox.start_many`), not yet waited for."""

    def __init__(self, jobs: list[tuple[Future[ExecutionResult], _Connection]], stall_limit_s: float) -> None:
        self.jobs = jobs
        self.stall_limit_s = stall_limit_s

    @property
    def futures(self) -> list[Future[ExecutionResult]]:
        return [future for future, _ in self.jobs]

    def results(self) -> list[ExecutionResult]:
        """Wait for every program; results in the order given. A server that stops answering is killed and its
        jobs come back as `crashed`."""
        for future, conn in self.jobs:
            while not future.done():
                try:
                    future.result(timeout=0.5)
                except TimeoutError:
                    if conn.stalled(self.stall_limit_s):
                        log.error("a sandbox server stopped answering; killing it")
                        conn.abort("the sandbox server stopped answering")
        return [future.result() for future, _ in self.jobs]
