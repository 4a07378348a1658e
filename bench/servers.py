"""Sandbox throughput against the number of fork servers, with the CPU time the servers themselves spend.

    python bench/servers.py [--jobs 256] [--servers 1 2 4 8] [--workers N] [--ready 0 256] [--idle 2]

A server forks every one of its jobs, so when its CPU time is close to the wall time the server is the
bottleneck and more servers help. Trivial jobs (one print), `workers` at once (default: the cores). With
`--ready`, the servers keep that many job processes forked ahead (`executor.ready`; 0: `workers`), refilled in the
`--idle` seconds before each burst, as the GPU's turn in a rollout leaves them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

from delegate.executor import Sandbox, SandboxConfig
from delegate.executor.config import available_cores


def cpu_seconds(pid: int) -> float:
    """User + system time of a process and its live threads' children (the server when bwrap or a shell wraps
    it), from /proc."""
    pids = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as children:
            pids += [int(c) for c in children.read().split()]
    ticks = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a job that has already exited
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=256)
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--workers", type=int, default=available_cores())
    parser.add_argument("--ready", type=int, nargs="+", default=[0])
    parser.add_argument("--idle", type=float, default=2.0, help="seconds before each burst")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    codes = [f"print({i} * {i + 1} + sum(range(99)))" for i in range(args.jobs)]
    rows = []
    for servers, ready in ((s, r) for s in args.servers if s <= args.workers for r in args.ready):
        config = SandboxConfig(workers=args.workers, servers=servers, ready=ready or None,
                               max_processes=max(512, 4 * (ready + args.workers)))
        with Sandbox(config) as sandbox:
            sandbox.run_many(codes[: 2 * args.workers])  # warm
            best = (float("inf"), 0.0, 0)
            for _ in range(args.repeats):
                time.sleep(args.idle)
                before = sum(cpu_seconds(pid) for pid in sandbox.server_pids)
                start = time.perf_counter()
                results = sandbox.run_many(codes)
                wall = time.perf_counter() - start
                used = sum(cpu_seconds(pid) for pid in sandbox.server_pids) - before
                best = min(best, (wall, used, sum(r.status == "ok" for r in results)))
        wall, used, ok = best
        rows.append((servers, ready or args.workers, wall, used, ok))
    print(f"\nSandbox: {args.jobs} trivial jobs, {args.workers} workers, {available_cores()} cores, best of "
          f"{args.repeats}\n")
    print(f"{'servers':>7}  {'ready':>5}  {'seconds':>7}  {'jobs/s':>7}  {'servers CPU s':>13}  "
          f"{'CPU / wall per server':>21}  ok")
    for servers, ready, wall, used, ok in rows:
        print(f"{servers:>7}  {ready:>5}  {wall:>7.2f}  {args.jobs / wall:>7.0f}  {used:>13.2f}  "
              f"{used / wall / servers:>21.2f}  {ok}/{args.jobs}")


if __name__ == "__main__":
    main()
