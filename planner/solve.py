"""Solve one question from the command line.

    delegate solve --config RECIPE.yaml "What is 123456789 * 987654321?" [--show] [--seed N] [--set F=V ...]
    python -m delegate.planner.solve ...                # the same command

Prints the answer; with --show, the transcript first, with requests, code and results set apart. Exit status: 0 with
an answer, 1 without one, 2 for a recipe that cannot be loaded (one line on stderr naming the field, no traceback).
`--seed` seeds Python's, NumPy's and torch's generators before the models load, so a sampled recipe (temperature
above 0) answers the same way each run on the same machine and library versions; without it each run samples anew.
"""

from __future__ import annotations

import argparse
import logging
import sys

from delegate.cli import add_recipe_arguments, load_config, setup_logging
from delegate.planner.agent import Agent
from delegate.planner.config import AgentConfig
from delegate.planner.trajectory import Trajectory, segments


def format_transcript(trajectory: Trajectory, tokenizer) -> str:
    """The completion as planner text and inserted results, with each call's request, code and status."""
    pieces, calls = [], iter(trajectory.tool_calls)
    for run in segments(trajectory, tokenizer):
        text = run["text"]
        if run["trained"]:
            pieces.append(text)
        else:
            call = next(calls, None)
            if call is not None:
                code = "\n".join(f"    │ {line}" for line in (call.code or "(nothing ran)").splitlines())
                cached = " (cached)" if call.cached else ""
                pieces.append(f"\n    ┌─ request: {call.request}\n    ├─ code{cached}:\n{code}\n"
                              f"    └─ {call.result.status}\n")
            pieces.append(f"[inserted]{text}[/inserted]")
    return "".join(pieces) + f"\n\n(finish: {trajectory.finish_reason}; tool calls: {len(trajectory.tool_calls)})"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Solve one question with a Delegate agent.")
    add_recipe_arguments(parser)
    parser.add_argument("--seed", type=int, help="seed the sampling (the same answer each run); default: unseeded")
    parser.add_argument("--show", action="store_true", help="print the transcript too")
    parser.add_argument("question")
    args = parser.parse_args(argv)
    setup_logging(logging.WARNING, "%(levelname)s %(name)s: %(message)s")
    config = load_config(parser, args, AgentConfig.from_yaml)
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    with Agent(config) as agent:
        solution = agent.solve(args.question)
        if args.show:
            print(format_transcript(solution.trajectory, agent.tokenizer))
    print(solution.answer if solution.answer is not None else "(no answer)")
    return 0 if solution.answer is not None else 1


if __name__ == "__main__":
    sys.exit(main())
