"""The curriculum: each training problem's pass rate under the starting policy, easiest first.

    python -m delegate.training.curriculum --config RECIPE.yaml --out runs/curriculum.jsonl [--samples 8]
        [--drop-unsolved] [--trajectories runs/curriculum-rollouts.jsonl]

Samples `--samples` answers per problem through the same engine and sandbox as training (the recipe's planner,
at its temperature), drops the problems every sample solved (they teach nothing), optionally those none solved,
and writes the rest from the highest pass rate to the lowest, with a `pass_rate` column. Point the recipe's
`data.path` at the file and keep `grpo.shuffle_dataset: false`: training then follows that order, and a resumed
run continues it where it stopped (the trainer skips the batches it has already seen). `--trajectories` keeps
every sampled rollout as a trajectory record (`training.records`): the pool that `python -m delegate.training.sft`
picks its examples from.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm

from delegate.planner import Agent, AgentConfig
from delegate.training.recipe import Recipe
from delegate.training.rewards import answers_match

log = logging.getLogger("training.curriculum")


@dataclass(frozen=True)
class Scored:
    prompt: str
    answer: str
    pass_rate: float
    source: str = ""


def pass_rates(agent: Agent, problems: list[dict[str, str]], samples: int, batch: int = 64,
               trajectories: Path | None = None) -> list[Scored]:
    """Each problem's share of `samples` solutions whose answer matches the reference (with a progress bar);
    every rollout appended to `trajectories` as a record, batch by batch, when given."""
    from delegate.training.records import record, write_records

    flat = [p for p in problems for _ in range(samples)]
    solved: list[bool] = []
    if trajectories is not None:
        write_records(trajectories, [])
    with tqdm(total=len(flat), desc="curriculum", unit="sample") as progress:
        for start in range(0, len(flat), batch):
            chunk = flat[start:start + batch]
            solutions = agent.solve_many([p["prompt"] for p in chunk])
            solved += [answers_match(p["answer"], s.answer) for p, s in zip(chunk, solutions, strict=True)]
            if trajectories is not None:
                write_records(trajectories, [record(s.trajectory, agent.tokenizer, reference=p["answer"],
                                                    source=p.get("source")) for p, s in zip(chunk, solutions,
                                                                                             strict=True)],
                              append=True)
            progress.update(len(chunk))
    scored = [Scored(p["prompt"], p["answer"], sum(solved[i * samples:(i + 1) * samples]) / samples,
                     p.get("source") or "") for i, p in enumerate(problems)]
    if samples > 1 and scored and all(s.pass_rate in (0.0, 1.0) for s in scored):
        log.warning("curriculum: every pass rate is 0 or 1 (%d samples each, planner temperature %s): the samples "
                    "agree, so the order says nothing about difficulty within the solved or the unsolved; sample "
                    "at the temperature training uses (planner.temperature > 0)", samples,
                    agent.config.planner.temperature)
    return scored


def write_scored(scored: list[Scored], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for s in scored:
            f.write(json.dumps(asdict(s)) + "\n")


def read_scored(path: Path) -> list[Scored]:
    return [Scored(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def order(scored: list[Scored], drop_unsolved: bool = False) -> list[Scored]:
    """Solved-by-all dropped (and unsolved, if asked); the rest from easy (high pass rate) to hard; ties keep the
    original order."""
    kept = [s for s in scored if s.pass_rate < 1.0 and (s.pass_rate > 0.0 or not drop_unsolved)]
    return sorted(kept, key=lambda s: -s.pass_rate)


def main(argv: list[str] | None = None, **agent_kwargs: Any) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--drop-unsolved", action="store_true")
    parser.add_argument("--trajectories", type=Path, help="also write every sampled rollout here (JSONL records)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a recipe field, e.g. --set executor.isolation=none (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from delegate.training.grpo import load_prompts

    recipe = Recipe.from_yaml(args.config, args.set)
    problems = list(load_prompts(recipe))
    agent_config = AgentConfig(planner=recipe.planner, coder=recipe.coder, executor=recipe.executor)
    with Agent(agent_config, **agent_kwargs) as agent:
        scored = pass_rates(agent, problems, args.samples, recipe.planner.batch_size, args.trajectories)
    ordered = order(scored, args.drop_unsolved)
    out = Path(args.out)
    write_scored(ordered, out)
    log.info("curriculum: kept %d of %d problems (%d solved by every sample) -> %s", len(ordered), len(scored),
             sum(s.pass_rate == 1.0 for s in scored), out)
    return out


if __name__ == "__main__":
    main()
