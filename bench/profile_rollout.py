"""Where a real rollout batch's time goes: cProfile of `Agent.solve_many` on the real 0.5B (top functions by own
time), with the same batch's tokens per second.

    python bench/profile_rollout.py --config training/recipes/qwen2.5-0.5b-request.yaml \
        --data ../shared/data/gsm8k/test.jsonl --rows 64 --max-tokens 256 [--set executor.isolation=none]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--kernels", action="store_true",
                        help="also torch.profiler: GPU time per operator (not where the host waits)")
    args = parser.parse_args()

    from delegate.planner import Agent, AgentConfig
    from delegate.training.data import load_problems

    overrides = [*args.set, f"planner.max_completion_tokens={args.max_tokens}", f"planner.batch_size={args.rows}"]
    config = AgentConfig.from_yaml(args.config, overrides)
    questions = [row["prompt"] for row in load_problems(args.data, split="test", limit=args.rows, big_values=True)]
    with Agent(config) as agent:
        agent.solve_many(questions[:4])  # warm: CUDA context, kernels, the sandbox's pool
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        solutions = agent.solve_many(questions)
        profiler.disable()
        seconds = time.perf_counter() - start
    tokens = sum(sum(s.trajectory.env_mask) for s in solutions)
    print(f"{len(questions)} rows, {args.max_tokens} max tokens: {seconds:.1f} s, {tokens} sampled tokens "
          f"({tokens / seconds:.0f}/s)")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.top)
    print(text.getvalue())
    if args.kernels:
        import torch
        from torch.profiler import ProfilerActivity, profile

        with Agent(config) as agent, profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as traced:
            start = time.perf_counter()
            agent.solve_many(questions)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        print(f"under torch.profiler: {seconds:.1f} s")
        print(traced.key_averages().table(sort_by="device_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
