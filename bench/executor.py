"""Executor benchmark: the sandbox against a fresh interpreter per job, side by side in one run.

Executors: (a) `Sandbox` (pre-warmed fork server, every isolation layer), (a0) the same with `isolation: none`
(what the layers cost, measured in the same run), (b) `python -c` per job importing numpy and sympy first (how
most tool-RL stacks run code), (c) `python -c` per job with no imports. Workloads: `print(1)`, a big-integer and
Decimal computation, a sympy solve. For each: latency p50/p90 at concurrency 1, and jobs/s at concurrency 1, 2, 8.

    python bench/executor.py [--seconds 1.5] [--concurrency 1 2 8]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

from delegate.executor import Sandbox, SandboxConfig

WORKLOADS = {
    "print(1)": "print(1)",
    "bigint+decimal": ("from decimal import Decimal, getcontext\ngetcontext().prec = 50\n"
                       "print(pow(123456789, 1000, 10**40 + 7), Decimal(2).sqrt() * Decimal('1.5'))"),
    "sympy solve": "import sympy as sp\nx = sp.Symbol('x')\nprint(sp.solve(x**3 - 6*x**2 + 11*x - 6, x))",
}
TARGETS = {"p50_ms_print1": 6.0, "jobs_per_s_trivial": 300.0, "ratio_vs_b": 50.0}


def subprocess_runner(preamble: str) -> Callable[[str], bool]:
    def run(code: str) -> bool:
        done = subprocess.run([sys.executable, "-c", preamble + code], capture_output=True, timeout=60, check=False)
        return done.returncode == 0
    return run


def measure(run: Callable[[str], bool], code: str, concurrency: int, seconds: float, min_jobs: int):
    """Run `code` from `concurrency` threads for `seconds` (and at least `min_jobs` jobs in all)."""
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    start = time.perf_counter()
    stop_at = start + seconds

    def worker() -> None:
        nonlocal failures
        while True:
            with lock:
                if time.perf_counter() >= stop_at and len(latencies) >= min_jobs:
                    return
            t0 = time.perf_counter()
            ok = run(code)
            with lock:
                latencies.append(time.perf_counter() - t0)
                failures += not ok

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return latencies, len(latencies) / elapsed, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="measuring time per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 8])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    sandbox = Sandbox(SandboxConfig(timeout_s=30.0)).start()
    open_box = Sandbox(SandboxConfig(timeout_s=30.0, isolation="none")).start()
    executors: dict[str, Callable[[str], bool]] = {
        "(a) sandbox": lambda code: sandbox.run(code).ok,
        "(a0) sandbox, isolation none": lambda code: open_box.run(code).ok,
        "(b) python -c +numpy,sympy": subprocess_runner("import numpy, sympy\n"),
        "(c) python -c": subprocess_runner(""),
    }
    rows = []
    for name, run in executors.items():
        for workload, code in WORKLOADS.items():
            run(code)  # warm the page cache and the sandbox's pool
            cells = {}
            for concurrency in args.concurrency:
                print(f"  measuring {name} / {workload} / concurrency {concurrency} ...", file=sys.stderr, flush=True)
                latencies, throughput, failures = measure(run, code, concurrency, args.seconds,
                                                          min_jobs=max(4, concurrency))
                cells[concurrency] = (latencies, throughput, failures)
            lat = sorted(cells[args.concurrency[0]][0])
            p50 = statistics.median(lat) * 1000
            p90 = lat[min(int(0.9 * len(lat)), len(lat) - 1)] * 1000
            failed = sum(c[2] for c in cells.values())
            rows.append((name, workload, p50, p90, {c: cells[c][1] for c in args.concurrency}, failed))
    batch = 256
    batch_rates, batch_ok = {}, 0
    for name, box in (("(a) sandbox", sandbox), ("(a0) sandbox, isolation none", open_box)):
        print(f"  measuring {name} / print(1) / run_many of {batch} ...", file=sys.stderr, flush=True)
        box.run_many(["print(1)"] * batch)
        t0 = time.perf_counter()
        ok = sum(r.ok for r in box.run_many(["print(1)"] * batch))
        batch_rates[name] = batch / (time.perf_counter() - t0)
        batch_ok = batch_ok if box is open_box else ok
    batch_rate = batch_rates["(a) sandbox"]
    sandbox.close()
    open_box.close()

    header = (f"{'executor':<29} {'workload':<15} {'p50 ms':>8} {'p90 ms':>8} "
              + " ".join(f"{'jobs/s@' + str(c):>10}" for c in args.concurrency) + f" {'failed':>7}")
    print(f"\nExecutor benchmark ({len(sandbox.layers.present)} isolation layers: "
          f"{', '.join(sandbox.layers.present)}; workers={sandbox.config.workers})\n")
    print(header)
    print("-" * len(header))
    for name, workload, p50, p90, throughput, failed in rows:
        print(f"{name:<29} {workload:<15} {p50:8.1f} {p90:8.1f} "
              + " ".join(f"{throughput[c]:10.1f}" for c in args.concurrency) + f" {failed:7d}")

    by_key = {(r[0], r[1]): r for r in rows}
    top = max(args.concurrency)
    sandbox_trivial = by_key[("(a) sandbox", "print(1)")]
    print("\nTargets (2 cores):")
    print(f"  p50 latency of print(1) in the sandbox: {sandbox_trivial[2]:.1f} ms (target <= "
          f"{TARGETS['p50_ms_print1']:.0f} ms)")
    best = max(*sandbox_trivial[4].values(), batch_rate)
    print(f"  (a) sandbox, print(1) as one run_many of {batch} (the engine's call): {batch_rate:.0f} jobs/s, "
          f"{batch - batch_ok} failed")
    print(f"  trivial jobs/s in the sandbox: {best:.0f} (target >= {TARGETS['jobs_per_s_trivial']:.0f})")
    unisolated = by_key[("(a0) sandbox, isolation none", "print(1)")]
    print(f"  cost of the isolation layers, print(1): p50 {sandbox_trivial[2]:.1f} ms against {unisolated[2]:.1f} ms; "
          f"run_many of {batch} {batch_rate:.0f} against {batch_rates['(a0) sandbox, isolation none']:.0f} jobs/s")
    for workload in WORKLOADS:
        ratio = by_key[("(a) sandbox", workload)][4][top] / by_key[("(b) python -c +numpy,sympy", workload)][4][top]
        print(f"  throughput sandbox / (b) at concurrency {top}, {workload}: {ratio:.0f}x "
              f"(target >= {TARGETS['ratio_vs_b']:.0f}x)")


if __name__ == "__main__":
    main()
