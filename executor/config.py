"""Configuration of the sandbox: limits for every job and the shape of the worker pool."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_PRELOAD = ("math", "decimal", "fractions", "itertools", "functools", "collections", "statistics", "re",
                   "json", "random", "numpy", "mpmath", "sympy")


# The sandbox's own host uid and gid (when the caller is root): above Debian's regular users (1000-59999), below
# systemd's dynamic users (61184-65519) and the usual subordinate-id ranges (100000 up), and not `nobody` (65534),
# whose per-user kernel limits (inotify instances, processes, message queues) host daemons share.
SANDBOX_ID = 60420
JOB_MEMORY_SLACK_MB = 128

# The default share. On the H200 machine (16 cores, gVisor, slow forks) one server ran 120 trivial jobs/s with its
# CPU busy 98 % of the time, four 388/s, eight 739/s (`bench/servers.py`, bench/NOTES.md).
WORKERS_PER_SERVER = 4


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


class SandboxConfig(BaseModel):
    """Limits of one job and the pool that runs them. Unknown fields are an error at load time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(5.0, gt=0, description="wall-clock limit; the job gets an exception, then a hard kill")
    grace_s: float = Field(1.0, gt=0, description="time between the soft deadline and the hard kill")
    memory_mb: int = Field(1024, gt=0, description="address space a job may add to the warmed interpreter")
    max_output_bytes: int = Field(65536, gt=0, description="per stream; beyond it head and tail are kept")
    stop_output_bytes: int = Field(8 << 20, gt=0, description="a stream passing this stops the job")
    file_size_mb: int = Field(64, gt=0, description="largest file a job may write")
    tmpfs_mb: int = Field(128, gt=0, description="size of a job's private working directory (namespaced mode)")
    open_files: int = Field(256, gt=16, description="RLIMIT_NOFILE of a job")
    max_processes: int = Field(512, gt=8, description="processes the whole sandbox may hold (cgroup or NPROC)")
    job_processes: int = Field(128, gt=2, description="processes one job may hold, itself and its threads included "
                               "(its own pids cgroup, where the machine allows)")
    workers: int = Field(default_factory=available_cores, gt=0, description="jobs run at once (over all servers)")
    servers: int | None = Field(None, gt=0, description="fork servers sharing the workers (a server forks each of "
                                "its jobs in turn); None: one for every 4 workers")
    ready: int | None = Field(None, gt=0, description="job processes kept forked and isolated ahead of need (over "
                              "all servers, at least `workers`): a burst of this many jobs waits for no fork. The "
                              "pool is refilled while the servers are idle; None: `workers`")
    preload: tuple[str, ...] = Field(DEFAULT_PRELOAD, description="modules imported and warmed once in the server")
    isolation: Literal["full", "none"] = Field(
        "full", description="full: refuse to start unless every isolation layer is present (bubblewrap with an "
        "allowlist filesystem, an unprivileged host identity, per-job namespaces, the seccomp filter); none: run "
        "jobs as the caller with the host's files and network, an explicit and loudly logged opt-in")
    uid: int = Field(SANDBOX_ID, ge=1, description="host uid the sandbox runs as when the caller is root: one of "
                     "its own, so that no host user shares its per-user kernel limits (not `nobody`, 65534)")
    gid: int = Field(SANDBOX_ID, ge=1, description="host gid the sandbox runs as when the caller is root (its own)")
    memory_total_mb: int | None = Field(
        None, gt=0, description="memory ceiling of the whole sandbox (a cgroup's limit, where one is writable), "
        "shared out over the servers; None: 512 MB per server plus memory_mb and two tmpfs_mb per worker, at "
        "most half of the host's memory")
    start_timeout_s: float = Field(60.0, gt=0, description="how long the server may take to import and warm up")

    @model_validator(mode="after")
    def _servers_have_workers(self) -> SandboxConfig:
        if self.servers is not None and self.servers > self.workers:
            raise ValueError(f"servers ({self.servers}) is more than workers ({self.workers}): a server would idle")
        if self.job_processes > self.max_processes:
            raise ValueError(f"job_processes ({self.job_processes}) is more than max_processes ({self.max_processes})")
        if self.ready is not None and self.ready + self.workers > self.max_processes // 2:
            raise ValueError(f"ready ({self.ready}) and workers ({self.workers}) take more than half of "
                             f"max_processes ({self.max_processes}), leaving the jobs' own processes too few; "
                             "raise max_processes")
        return self

    @property
    def job_memory_bytes(self) -> int:
        """A job's whole memory, as its own memory cgroup counts it: `memory_mb` plus room for the pages of the
        shared, warmed interpreter that the job writes to (each becomes a copy of its own)."""
        return (self.memory_mb + JOB_MEMORY_SLACK_MB) << 20

    def slots_of(self, server: int) -> int:
        """Job cgroups one server makes ahead of need: one for each job process it may hold (its waiting pool and
        its busy workers) and two for jobs whose processes are still being reaped."""
        return self.ready_of(server) + self.workers_of(server) + 2

    @property
    def server_count(self) -> int:
        return self.servers if self.servers is not None else max(1, self.workers // WORKERS_PER_SERVER)

    def memory_of(self, server: int, host_bytes: int) -> int:
        """The memory ceiling of one server's group, in bytes."""
        if self.memory_total_mb is not None:
            return _share(self.memory_total_mb, self.server_count, server) << 20
        wanted = 512 + self.workers_of(server) * (self.memory_mb + 2 * self.tmpfs_mb)
        return min(wanted << 20, host_bytes // 2 // self.server_count)

    def workers_of(self, server: int) -> int:
        """The workers of one server: `workers` shared out, the first servers taking one more where it is uneven."""
        return _share(self.workers, self.server_count, server)

    def ready_of(self, server: int) -> int:
        """The job processes one server keeps waiting: its share of `ready`, and never fewer than its workers."""
        return max(self.workers_of(server), _share(self.ready or 0, self.server_count, server))


def _share(total: int, parts: int, index: int) -> int:
    share, extra = divmod(total, parts)
    return share + (index < extra)
