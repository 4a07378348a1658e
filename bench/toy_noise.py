"""Run-to-run noise of the toy world: the same world with several seeds (problems, tokenizer, initial weights,
SFT data, GRPO sampling all follow the seed), side by side in one run, and optional variants of its settings.

    python bench/toy_noise.py --seeds 0 1 2 --modes request [--device cuda] [--parallel 3] \
        [--variant NAME FIELD=VALUE ...] [--out runs/toy-noise]

Each (variant, seed) is `python -m delegate.training.toy.demo` in its own process, `--threads` CPU threads each
(run several at
once on a machine with the cores, or on one GPU); prints one table: held-out accuracy before and after GRPO and the
gain, per seed, then each variant's mean and sample standard deviation of the gain, and its run time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_one(out: Path, mode_args: list[str], seed: int, settings: list[str], device: str | None,
            threads: int = 1) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "delegate.training.toy.demo", "--out", str(out), "--seed", str(seed), "--modes",
               *mode_args, *(["--device", device] if device else []), *(["--set", *settings] if settings else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    started = time.monotonic()
    with (out / "log.txt").open("w") as log:
        code = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    results = out / "results.json"
    if code != 0 or not results.exists():
        return {"error": f"exit {code}, see {out / 'log.txt'}", "seconds": time.monotonic() - started}
    return json.loads(results.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=["request"])
    parser.add_argument("--device")
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each world")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME FIELD=VALUE",
                        help="a named variant of the world's settings (demo's --set; `--variant base` for the "
                             "defaults); without any, the defaults alone")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "toy-noise")
    args = parser.parse_args(argv)
    variants = {v[0]: v[1:] for v in args.variant} or {"base": []}
    jobs = [(name, seed) for name in variants for seed in args.seeds]
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = {job: pool.submit(run_one, args.out / f"{job[0]}-seed{job[1]}", args.modes, job[1],
                                    variants[job[0]], args.device, args.threads) for job in jobs}
        results = {job: future.result() for job, future in futures.items()}

    lines = ["| variant | mode | seed | decoding | before | after | gain | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    gains: dict[tuple[str, str, str], list[float]] = {}
    for (name, seed), result in results.items():
        if "error" in result:
            lines.append(f"| {name} | - | {seed} | - | - | - | {result['error']} | {result['seconds'] / 60:.1f} |")
            continue
        for mode in args.modes:
            for decoding in ("sampled", "greedy"):
                before = result[mode]["before"][decoding]["accuracy"]
                after = result[mode]["after"][decoding]["accuracy"]
                gains.setdefault((name, mode, decoding), []).append(after - before)
                lines.append(f"| {name} | {mode} | {seed} | {decoding} | {before:.1%} | {after:.1%} | "
                             f"{after - before:+.1%} | {result['seconds'] / 60:.1f} |")
    lines += ["", "| variant | mode | decoding | seeds | gain mean | gain sd |", "|---|---|---|---|---|---|"]
    for (name, mode, decoding), values in gains.items():
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        lines.append(f"| {name} | {mode} | {decoding} | {len(values)} | {statistics.mean(values):+.1%} | {sd:.1%} |")
    report = "\n".join(lines)
    (args.out / "noise.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
