"""Configuration of the sandbox: limits for every job and the shape of the worker pool."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_PRELOAD = ("math", "decimal", "fractions", "itertools", "functools", "collections", "statistics", "re",
                   "json", "random", "numpy", "mpmath", "sympy")


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
    workers: int = Field(default_factory=available_cores, gt=0, description="jobs run at once (over all servers)")
    servers: int = Field(1, gt=0, description="fork servers that share the workers; one forks each job in turn, "
                                              "so a busy many-core machine (or a slow fork) wants several")
    preload: tuple[str, ...] = Field(DEFAULT_PRELOAD, description="modules imported and warmed once in the server")
    require_isolation: bool = Field(False, description="refuse to start unless every isolation layer is present")
    start_timeout_s: float = Field(60.0, gt=0, description="how long the server may take to import and warm up")

    @model_validator(mode="after")
    def _servers_have_workers(self) -> SandboxConfig:
        if self.servers > self.workers:
            raise ValueError(f"servers ({self.servers}) is more than workers ({self.workers}): a server would idle")
        return self

    @property
    def workers_per_server(self) -> int:
        return max(1, -(-self.workers // self.servers))
