"""Solve one question from the command line.

    python -m delegate.planner.solve --config RECIPE.yaml "What is 123456789 * 987654321?" [--show]

Prints the answer; with --show, the transcript first, with requests, code and results set apart. Exit status: 0 with
an answer, 1 without one, 2 for a recipe that cannot be loaded (its error on stderr, without a traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys

import yaml

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Solve one question with a Delegate agent.")
    parser.add_argument("--config", required=True, help="a recipe with planner, coder and executor sections")
    parser.add_argument("--show", action="store_true", help="print the transcript too")
    parser.add_argument("question")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = AgentConfig.from_yaml(args.config)
    except (OSError, ValueError, yaml.YAMLError) as exc:  # a missing file, bad YAML, a wrong field: the user's to fix
        parser.exit(2, f"{parser.prog}: error: --config {args.config}: {exc}\n")
    with Agent(config) as agent:
        solution = agent.solve(args.question)
        if args.show:
            print(format_transcript(solution.trajectory, agent.tokenizer))
    print(solution.answer if solution.answer is not None else "(no answer)")
    return 0 if solution.answer is not None else 1


if __name__ == "__main__":
    sys.exit(main())
