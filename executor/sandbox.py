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
import tempfile
import threading
import time
from concurrent.futures import Future
from typing import IO, Any

from . import isolation, launch
from .cgroup import SandboxCgroup, host_memory_bytes
from .config import SandboxConfig
from .protocol import FRAME, encode
from .result import ExecutionResult

log = logging.getLogger(__name__)

STALL_MARGIN_S = 10.0  # beyond timeout + grace, how long a silent server with work in flight may take
_warned: set[str] = set()
_probes: dict[tuple[str, ...], str | None] = {}


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
        self.timeouts: dict[int, float] = {}  # job id -> its time limit, while pending
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
            if not self.pending:
                self.last_heard = time.monotonic()  # idle until now: silence before this job is not a stall
            self.pending[job_id] = future
            self.timeouts[job_id] = timeout_s
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
            try:
                self._route(json.loads(body))
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                # Never expected of our own server; if it happens, the server is not trusted to go on.
                log.error("the sandbox server sent a malformed message (%s); killing it", exc)
                self.kill()
                break
        code = self.proc.wait()
        reason = f"the sandbox server died (exit status {code})"
        if not self.hello.done():
            self.hello.set_result({"type": "fatal", "error": reason})
        self._fail_pending(reason)

    def _route(self, message: dict[str, Any]) -> None:
        if message["type"] == "result":
            result = ExecutionResult.from_dict(message["result"])
            with self.lock:
                future = self.pending.pop(message["id"], None)
                self.timeouts.pop(message["id"], None)
            if future is not None:
                future.set_result(result)
        elif not self.hello.done():
            self.hello.set_result(message)
        elif message["type"] == "fatal":
            log.error("sandbox server: %s", message["error"])

    def _log_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            log.warning("%s", line.decode(errors="replace").rstrip())

    def _fail_pending(self, reason: str) -> None:
        with self.lock:
            self.alive = False
            pending, self.pending = self.pending, {}
            self.timeouts.clear()
        for future in pending.values():
            if not future.done():
                future.set_result(ExecutionResult.crashed(reason))

    def abort(self, reason: str) -> None:
        """Kill the server and fail every job it holds; the next call starts a new one."""
        self.kill()
        self._fail_pending(reason)

    def kill(self) -> None:
        """Kill the outermost process. With bubblewrap that is the outer bwrap, whose death kills PID 1 of the
        PID namespace that holds the whole sandbox, so the kernel takes everything with it; without, the server."""
        self.proc.kill()

    def stalled(self, grace_s: float) -> bool:
        """Busy, and silent for longer than any job in flight may take. A busy server answers at least once per
        `timeout + grace` (each job ends by then, killed if need be, and the next one starts), so silence is
        counted from the last answer, or from the moment it became busy."""
        with self.lock:
            if not self.pending:
                return False
            limit = max(self.timeouts.values()) + grace_s + STALL_MARGIN_S
        return time.monotonic() - self.last_heard > limit

    def close(self, timeout_s: float = 5.0) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass  # already broken: the server is gone
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
        self._fail_pending("the sandbox was closed")


class Sandbox:
    """Runs untrusted Python programs in isolated, pre-forked processes of a warmed server.

    Bad code never raises here: it comes back as an `ExecutionResult` with a status. Only a sandbox that cannot
    start at all, or (with `isolation: full`, the default) lacks an isolation layer, raises `SandboxError`.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.layers = isolation.Layers()
        self.restarts = 0
        self._conns: list[_Connection | None] = [None] * self.config.server_count
        self._cgroups: list[SandboxCgroup | None] = [None] * self.config.server_count
        self._jobs_dirs: list[str | None] = [None] * self.config.server_count
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
                    self._stop(index)
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
        command, env = isolation.server_command()
        tmp_binds: list[str] = []
        # The groups first: the server's command shows the job slots to the sandbox (full isolation only: jobs
        # without namespaces of their own could not hide the other slots from themselves).
        limits = {"pids": cfg.max_processes // cfg.server_count,
                  "memory": cfg.memory_of(index, host_memory_bytes())}
        owner = (cfg.uid, cfg.gid) if os.geteuid() == 0 else None
        cgroup, no_cgroup = SandboxCgroup.create(
            limits, slots=cfg.slots_of(index) if cfg.isolation == "full" else 0,
            slot_limits={"pids": cfg.job_processes, "memory": cfg.job_memory_bytes}, owner=owner)
        self._cgroups[index] = cgroup
        job_cgroups: dict[str, str] = {}
        if cfg.isolation == "full":
            paths = launch.runtime_paths()
            prefix, why_not = self._isolated_prefix(paths, {c: str(d) for c, d in cgroup.slot_dirs.items()})
            if why_not is None:
                layers.present += ["bubblewrap", "identity"]
                command = prefix + command
                tmp_binds = [p for p in paths if p.startswith("/tmp/")]
                job_cgroups = {c: f"{launch.JOB_CGROUPS}/{c}" for c in cgroup.slot_dirs}
            else:
                layers.missing["bubblewrap" if "bubblewrap" in why_not else "identity"] = why_not
        else:
            layers.missing["bubblewrap"] = "isolation is 'none' (the config's choice)"
        if layers.missing_required and cfg.isolation == "full":
            raise SandboxError(self._refusal(layers))
        command = cgroup.wrap(command)
        nproc = None
        if "pids" in cgroup.limits:
            layers.present.append("process_limit")
        elif os.geteuid() != 0 or "identity" in layers.present:
            layers.present.append("process_limit")  # RLIMIT_NPROC binds an unprivileged uid
            nproc = cfg.max_processes
        else:
            layers.missing["process_limit"] = (f"{no_cgroup['pids']}, and RLIMIT_NPROC does not bind root: a job "
                                               "may start processes until its deadline")
        if "memory" in cgroup.limits:
            layers.present.append("memory_limit")
        else:
            layers.missing["memory_limit"] = (f"{no_cgroup['memory']}: only each job's address-space limit holds, "
                                              "not their sum")
        if job_cgroups.keys() == {"pids", "memory"}:
            layers.present.append("job_limits")
        elif cfg.isolation == "full":
            why = {**{c: f"no sandbox group: {w}" for c, w in no_cgroup.items()}, **cgroup.slot_missing}
            layers.missing["job_limits"] = ("no per-job memory and process groups (" + "; ".join(
                f"{c}: {w}" for c, w in why.items()) + "): jobs share the sandbox's ceilings, so one job can starve "
                "its siblings of memory or processes")
        jobs_dir = None
        if "bubblewrap" not in layers.present:  # jobs run in host directories: ours to make and to remove
            jobs_dir = self._jobs_dirs[index] = tempfile.mkdtemp(prefix="delegate-jobs-")
        server_config = {**cfg.model_dump(mode="json"), "workers": cfg.workers_of(index), "ready": cfg.ready_of(index),
                         "in_bwrap": "bubblewrap" in layers.present, "nproc": nproc, "tmp_binds": tmp_binds,
                         "jobs_dir": jobs_dir, "job_cgroups": job_cgroups, "job_slots": cfg.slots_of(index)}
        return _Connection(command, env, server_config), layers

    def _isolated_prefix(self, paths: list[str], cgroups: dict[str, str]) -> tuple[list[str], str | None]:
        """The bubblewrap command prefix for this caller, and None, or why the sandbox cannot be built here (probed
        once per shape, without the job groups, whose names change at every launch)."""
        bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
        if bwrap is None:
            return [], "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
        identity = None
        if os.geteuid() == 0:
            if setpriv is None:
                return [], ("identity: the caller is root and setpriv, needed to drop to an unprivileged uid, is "
                            "not installed (Debian/Ubuntu: apt-get install util-linux)")
            identity = (self.config.uid, self.config.gid)
        key = tuple(launch.server_argv(bwrap, setpriv, identity, paths))
        if key not in _probes:
            _probes[key] = launch.probe(list(key))
        return launch.server_argv(bwrap, setpriv, identity, paths, cgroups), _probes[key]

    def _refusal(self, layers: isolation.Layers) -> str:
        return (f"the sandbox refuses to run without {', '.join(layers.missing_required)}: "
                f"{layers.describe_missing(isolation.REQUIRED)}. Running model-written code unisolated is an "
                "explicit opt-in: executor.isolation: none")

    def _ready(self, index: int, conn: _Connection, layers: isolation.Layers) -> _Connection:
        cfg = self.config
        try:
            conn.wait_ready(cfg.start_timeout_s)
        except SandboxError:
            self._stop(index)
            raise
        for layer in ("job_namespaces", "seccomp"):
            why_not = conn.hello_message.get(layer)
            if why_not:
                layers.missing[layer] = why_not
            else:
                layers.present.append(layer)
        if conn.hello_message.get("preload_missing"):
            _warn_once(f"sandbox: could not preload {', '.join(conn.hello_message['preload_missing'])}")
        self.layers = layers
        if cfg.isolation == "none":
            _warn_once("sandbox: executor.isolation is 'none': model-written code runs UNISOLATED, as this "
                       "process's user, with the host's files and network")
        elif layers.missing_required:
            conn.close()
            self._stop(index)
            raise SandboxError(self._refusal(layers))
        optional = {name: why for name, why in layers.missing.items() if name not in isolation.REQUIRED}
        if optional and cfg.isolation == "full":
            _warn_once("sandbox runs without some limits: " + "; ".join(f"{k}: {v}" for k, v in optional.items()))
        return conn

    def _stop(self, index: int) -> None:
        conn = self._conns[index]
        if conn is not None:
            conn.close()
            self._conns[index] = None
        cgroup = self._cgroups[index]
        if cgroup is not None:
            cgroup.remove()
            self._cgroups[index] = None
        jobs_dir = self._jobs_dirs[index]
        if jobs_dir is not None:
            shutil.rmtree(jobs_dir, ignore_errors=True)
            self._jobs_dirs[index] = None

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
        return Running(jobs, self.config.grace_s)


class Running:
    """Programs handed to the sandbox's servers (`Sandbox.start_many`), not yet waited for."""

    def __init__(self, jobs: list[tuple[Future[ExecutionResult], _Connection]], grace_s: float) -> None:
        self.jobs = jobs
        self.grace_s = grace_s

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
                    if conn.stalled(self.grace_s):
                        log.error("a sandbox server stopped answering; killing it")
                        conn.abort("the sandbox server stopped answering")
        return [future.result() for future, _ in self.jobs]
