"""GPU benchmark: seconds per GRPO step through `training/grpo.py` (our rollout function) against TRL's vanilla GRPO
on the same random-shape model, prompts and completion lengths, no tool calls (`bench/train_step.py`); one table.

    python bench/gpu_step.py [--shape 1.5b] [--batch 64] [--group 8] [--completion-tokens 256] [--planner-graph]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

from bench.shapes import common_arguments, saved_model  # bench/shapes.py


def step(args: argparse.Namespace) -> str:
    model = saved_model(args.shape, Path(args.work) / f"random-{args.shape}")
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("train_step.py")), "--model", str(model),
                           "--device", "cuda", "--steps", str(args.steps), "--group", str(args.group),
                           "--batch", str(args.batch), "--completion-tokens", str(args.completion_tokens),
                           "--isolation", args.isolation, *(["--planner-graph"] if args.planner_graph else [])],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return f"\nGRPO step ({args.shape} shape, LoRA, {args.batch} completions x {args.completion_tokens} tokens)" + \
        done.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--completion-tokens", type=int, default=None, help="default: 256")
    parser.add_argument("--planner-graph", action="store_true",
                        help="a row with the planner on the CUDA-graph decoder (planner.cuda_graph)")
    args = parser.parse_args(argv)
    args.shape = args.shape or "1.5b"
    args.completion_tokens = args.completion_tokens or 256
    print(step(args), flush=True)


if __name__ == "__main__":
    main()
