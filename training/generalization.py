"""The generalization table: agents on every unseen suite's held-out split, greedy and sampled, paired.

    python -m delegate.training.generalization --config A.yaml [--config NAME=B.yaml ...] [--suite unseen]
        [--limit N] [--seed S] [--modes greedy sampled] [--pair UNTRAINED TRAINED] [--set F=V] [--out DIR] [--resume]
    delegate eval --suite unseen --config A.yaml [--config B.yaml ...]      # the same parser

The seed claims that tool use learned on math carries over to tasks the planner never trained on. This measures it:
each agent (a recipe, or a trained run's `agent.yaml`; `NAME=PATH` names it, else `evaluate.agent_name`) is
evaluated by `training.evaluate.evaluate` on each suite of `--suite` (`unseen`, or `unseen:countdown,knights`;
`training.suites`, held-out split, `--limit` problems per suite, `--seed` their draw) in each mode:
- `greedy`: `planner.temperature=0`, the agent's own choice with the noise taken out;
- `sampled`: the recipe's temperature (what training sampled), seeded with `--seed` before each suite; skipped for
  a recipe whose temperature is 0 (it would repeat greedy).

Per agent and mode, one evaluation runs every suite's problems together (`OUT/<agent>/<mode>/all/`: one batch
decodes them all, where a run per suite would pay for every decoding step once per suite), and its records are split
into one ordinary evaluation directory per cell, `OUT/<agent>/<mode>/<suite>/` (`trajectories.jsonl`, and
`metrics.json` and `report.md` from `evaluate.summarize`), so any cell opens in the viewer and `--compare` works on
any two. The table is read back from the cells' files only, and written to `OUT`:
- `table.md`: rows agent x mode; a column per suite with its accuracy and tool-call rate, and their mean over the
  suites; then the paired comparisons;
- `table.json`: the same cells, each with the directory it came from;
- `generalization.png`: accuracy per suite (95 % Wilson intervals), one bar per agent, greedy.

Paired comparisons (`training.stats.paired` over problems lined up by `evaluate`'s own pairing): a trained agent
against its untrained one, per suite and over all suites pooled, in each mode. A pair is found when one agent's
planner is the other's model with a LoRA adapter (what every GRPO run's `agent.yaml` is), or given with
`--pair UNTRAINED TRAINED`. One planner, coder and sandbox are loaded per agent and shared by its cells.
`--resume` keeps a pooled run whose `metrics.json` holds the same agent on the same number of problems.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delegate.cli import add_set_argument, load_config, setup_logging
from delegate.training import evaluate, suites
from delegate.training.stats import paired, wilson

log = logging.getLogger("training.generalization")

MODES = ("greedy", "sampled")
GREEDY = "planner.temperature=0"


@dataclass(frozen=True)
class AgentSpec:
    name: str
    config: str
    model: str  # the planner's base model, adapter and protocol: how a trained agent finds its untrained one
    adapter: str | None
    protocol: str
    temperature: float


def parse_agent(text: str) -> tuple[str, str]:
    """`NAME=PATH` or `PATH` (named by `evaluate.agent_name`)."""
    name, sep, path = text.partition("=")
    if sep and name and not name.endswith((".yaml", ".yml")):
        return name, path
    return evaluate.agent_name(text), text


def find_pairs(agents: Sequence[AgentSpec], explicit: Sequence[Sequence[str]] = ()) -> list[tuple[str, str]]:
    """(untrained, trained) name pairs: the explicit ones, then every agent with an adapter that no explicit pair
    names against the first agent without one on the same base model and protocol."""
    names = {a.name for a in agents}
    pairs: list[tuple[str, str]] = []
    for before, after in explicit:
        unknown = [n for n in (before, after) if n not in names]
        if unknown:
            raise ValueError(f"--pair {before} {after}: no agent named {unknown[0]!r} (agents: {', '.join(names)})")
        pairs.append((before, after))
    for trained in agents:
        if trained.adapter is None or any(trained.name in pair for pair in pairs):  # named: as the user paired it
            continue
        for base in agents:
            if base.adapter is None and (base.model, base.protocol) == (trained.model, trained.protocol):
                pairs.append((base.name, trained.name))
                break
    return pairs


def modes_of(agent: AgentSpec, wanted: Sequence[str]) -> list[str]:
    return [m for m in wanted if not (m == "sampled" and agent.temperature == 0)]


@contextlib.contextmanager
def shared_parts(config: Any) -> Any:
    """The agent's planner model, tokenizer, coder (where its protocol uses one) and sandbox, loaded once for all
    its cells (`Agent` closes only what it made, so these outlive each evaluation) and closed at the end."""
    from transformers import AutoTokenizer

    from delegate.coder import build_coder
    from delegate.executor import Sandbox
    from delegate.planner.agent import load_planner_model

    planner = config.planner
    with contextlib.ExitStack() as stack:
        sandbox = Sandbox(config.executor).start()  # first: a fresh process, before this one touches a GPU
        stack.callback(sandbox.close)
        parts: dict[str, Any] = {"sandbox": sandbox, "tokenizer": AutoTokenizer.from_pretrained(planner.model)}
        if planner.backend == "transformers":
            parts["model"] = load_planner_model(planner.model, planner.adapter, planner.device, planner.dtype)
        if planner.protocol in ("request", "chat") and planner.tools:
            coder = build_coder(config.coder)
            stack.callback(coder.close)
            parts["coder"] = coder
        yield parts


def cell_dir(out: Path, agent: str, mode: str, suite: str) -> Path:
    return out / agent / mode / suite


def _kept(path: Path, config: str, n: int) -> bool:
    if not path.exists():
        return False
    metrics = json.loads(path.read_text())
    return metrics.get("config") == config and metrics.get("n") == n


def split_by_suite(run: Path, out: Path, agent: str, mode: str, names: Sequence[str]) -> None:
    """Each suite's records of a pooled run as an evaluation directory of its own: `trajectories.jsonl`, and
    `metrics.json` and `report.md` made by `evaluate.summarize` and `evaluate.write_report` from those records."""
    from delegate.training.records import read_records, write_records

    records = read_records(run / "trajectories.jsonl")
    pooled = json.loads((run / "metrics.json").read_text())
    for suite in names:
        mine = [r for r in records if r.get("source") == f"{suites.PREFIX}/{suite}"]
        where = cell_dir(out, agent, mode, suite)
        write_records(where / "trajectories.jsonl", mine)
        metrics = {**evaluate.summarize(mine), "config": pooled["config"], "tools": pooled["tools"],
                   "pooled_run": str(run.relative_to(out))}
        (where / "metrics.json").write_text(json.dumps(metrics, indent=2))
        evaluate.write_report(where, f"{agent}, {mode}, {suite}", metrics,
                              f"Agent: `{pooled['config']}`; the {suite} records of `{run}`.")


def run_agent(agent: AgentSpec, problems: dict[str, list[dict[str, Any]]], out: Path, modes: Sequence[str], *,
              overrides: Sequence[str], seed: int, resume: bool, batch_size: int | None,
              **agent_kwargs: Any) -> None:
    """Evaluate one agent on every suite in every mode: per mode one `evaluate.evaluate` run over all the suites'
    problems together (`<agent>/<mode>/all/`: one batch decodes them all, instead of one pass per suite), then
    split into the suites' cells."""
    from transformers import set_seed

    from delegate.planner import AgentConfig

    pooled = [p for suite in problems.values() for p in suite]
    todo = [mode for mode in modes_of(agent, modes)
            if not (resume and _kept(cell_dir(out, agent.name, mode, "all") / "metrics.json", agent.config,
                                     len(pooled)))]
    if todo:
        with shared_parts(AgentConfig.from_yaml(agent.config, overrides)) as parts:
            for mode in todo:
                extra = [GREEDY] if mode == "greedy" else []
                set_seed(seed)  # a sampled run draws the same way every time; greedy does not draw
                log.info("%s, %s: %d problems", agent.name, mode, len(pooled))
                evaluate.evaluate(agent.config, pooled, cell_dir(out, agent.name, mode, "all"),
                                  batch_size=batch_size, overrides=[*overrides, *extra], **parts, **agent_kwargs)
    else:
        log.info("%s: every run kept (--resume)", agent.name)
    for mode in modes_of(agent, modes):
        split_by_suite(cell_dir(out, agent.name, mode, "all"), out, agent.name, mode, list(problems))


# --- the table, read back from the cells' files ----------------------------------------------------------------

def collect(out: Path, agents: Sequence[AgentSpec], names: Sequence[str], modes: Sequence[str],
            pairs: Sequence[tuple[str, str]], about: dict[str, Any]) -> dict[str, Any]:
    """`table.json`'s content: every cell from its own `metrics.json`, the means, and the paired comparisons."""
    rows = []
    for agent in agents:
        for mode in modes_of(agent, modes):
            cells = {}
            for suite in names:
                where = cell_dir(out, agent.name, mode, suite)
                m = json.loads((where / "metrics.json").read_text())
                cells[suite] = {"n": m["n"], "accuracy": m["accuracy"], "accuracy_ci95": m["accuracy_ci95"],
                                "tool_call_rate": m["tool_call_rate"], "calls_per_answer": m["calls_per_answer"],
                                "tool_error_rate": m["tool_error_rate"], "run": str(where.relative_to(out))}
            right = sum(round(c["accuracy"] * c["n"]) for c in cells.values())
            total = sum(c["n"] for c in cells.values())
            mean = {"accuracy": sum(c["accuracy"] for c in cells.values()) / len(cells),
                    "tool_call_rate": sum(c["tool_call_rate"] for c in cells.values()) / len(cells),
                    "pooled_accuracy_ci95": list(wilson(right, total)), "n": total}
            rows.append({"agent": agent.name, "config": agent.config, "mode": mode,
                         "temperature": 0.0 if mode == "greedy" else agent.temperature, "cells": cells,
                         "mean": mean})
    by_name = {a.name: a for a in agents}
    comparisons = []
    for before, after in pairs:
        for mode in modes:
            if mode not in modes_of(by_name[before], modes) or mode not in modes_of(by_name[after], modes):
                continue
            pooled: list[list[bool]] = [[], []]
            for suite in [*names, "all"]:
                if suite == "all":
                    correct = pooled
                else:
                    correct = evaluate._paired_correctness([cell_dir(out, before, mode, suite),
                                                            cell_dir(out, after, mode, suite)])
                    pooled[0] += correct[0]
                    pooled[1] += correct[-1]
                comparisons.append({"untrained": before, "trained": after, "mode": mode, "suite": suite,
                                    **paired(correct[0], correct[-1])})
    return {**about, "suites": list(names), "modes": list(modes), "rows": rows, "paired": comparisons}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def markdown(table: dict[str, Any]) -> str:
    """`table.md`: the accuracy table (each cell `accuracy (tool-call rate)`) and the paired comparisons."""
    names = table["suites"]
    head = ["agent", "mode", *[f"{s} (n={table['rows'][0]['cells'][s]['n']})" if table["rows"] else s
                               for s in names], "mean"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---|" * (len(names) + 1)]
    for row in table["rows"]:
        mode = row["mode"] if row["mode"] == "greedy" else f"sampled (T={row['temperature']:g})"
        cells = [f"{_pct(row['cells'][s]['accuracy'])} ({_pct(row['cells'][s]['tool_call_rate'])})" for s in names]
        mean = f"{_pct(row['mean']['accuracy'])} ({_pct(row['mean']['tool_call_rate'])})"
        lines.append(f"| {row['agent']} | {mode} | " + " | ".join(cells) + f" | {mean} |")
    text = (f"# Generalization to unseen tasks\n\nHeld-out split of `{table['suite']}` (`training.suites`), "
            f"{table['limit_text']}, seed {table['seed']}. Each cell: accuracy (tool-call rate, the share of "
            "problems with at least one call); the mean is over the suites. Every cell is the `metrics.json` of "
            f"`<agent>/<mode>/<suite>/`.\n\n" + "\n".join(lines) + "\n\n")
    for agent, config in {row["agent"]: row["config"] for row in table["rows"]}.items():
        text += f"- `{agent}`: `{config}`\n"
    if table["paired"]:
        text += ("\n## Paired: trained minus untrained\n\nOver the same problems (`training.stats.paired`): the "
                 "accuracy difference, its 95 % paired bootstrap interval, problems gained and lost, McNemar's "
                 "exact p.\n\n| untrained | trained | mode | suite | n | delta | 95% interval | gained | lost "
                 "| p |\n|---|---|---|---|---|---|---|---|---|---|\n")
        for c in table["paired"]:
            low, high = c["ci95"]
            text += (f"| {c['untrained']} | {c['trained']} | {c['mode']} | {c['suite']} | {c['n']} | "
                     f"{100 * c['delta']:+.1f} | {100 * low:+.1f} to {100 * high:+.1f} | {c['gained']} | "
                     f"{c['lost']} | {c['mcnemar_p']:.3g} |\n")
    return text + "\n![accuracy per suite, greedy](generalization.png)\n"


def plot(table: dict[str, Any], path: Path) -> Path:
    """Greedy accuracy per suite, one bar per agent (`evaluate.plot_by_source`'s grouped bars)."""
    named = {row["agent"]: {"by_source": row["cells"]} for row in table["rows"] if row["mode"] == "greedy"}
    if not named:  # no greedy mode asked for: the first mode instead
        named = {row["agent"]: {"by_source": row["cells"]} for row in table["rows"]}
    return evaluate.plot_by_source(named, path)


def write_table(out: Path, table: dict[str, Any]) -> Path:
    (out / "table.json").write_text(json.dumps(table, indent=1))
    plot(table, out / "generalization.png")
    path = out / "table.md"
    path.write_text(markdown(table))
    return path


# --- the command ---------------------------------------------------------------------------------------------

def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True, metavar="[NAME=]RECIPE.yaml",
                        help="an agent: a recipe or a trained run's agent.yaml, optionally named (repeatable)")
    add_set_argument(parser)
    parser.add_argument("--suite", default=suites.PREFIX, help="the suites: unseen (all, the default) or "
                        "unseen:NAME[,NAME] (" + ", ".join(suites.SUITES) + ")")
    parser.add_argument("--limit", type=int, help=f"problems per suite (default {suites.DEFAULT_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="the suites' draw and the sampled mode's seed")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("UNTRAINED", "TRAINED"),
                        help="compare two agents by name, paired (found by itself for an adapter on its base)")
    parser.add_argument("--batch-size", type=int, help="problems per solve_many call (default: planner.batch_size)")
    parser.add_argument("--out", type=Path, default=Path("runs/generalization"), help="the table's directory")
    parser.add_argument("--resume", action="store_true", help="keep the cells already evaluated")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None, **agent_kwargs: Any) -> Path:
    """Run the table's evaluations and write `table.md`, `table.json` and `generalization.png` in `--out`; its path.
    `agent_kwargs` reach every `Agent` (tests pass logits processors)."""
    from delegate.planner import AgentConfig

    parser = build_parser(prog)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        names = suites.names_of(args.suite)
    except ValueError as exc:
        parser.error(f"--suite: {exc}")
    agents = []
    for text in args.config:
        name, path = parse_agent(text)
        config = load_config(parser, argparse.Namespace(config=path, set=args.set), AgentConfig.from_yaml)
        agents.append(AgentSpec(name, path, config.planner.model, config.planner.adapter, config.planner.protocol,
                                config.planner.temperature))
    if len({a.name for a in agents}) != len(agents):
        parser.error("two agents share a name: name them, --config NAME=PATH")
    try:
        pairs = find_pairs(agents, args.pair)
    except ValueError as exc:
        parser.error(str(exc))
    from delegate.training.data import load_problems

    problems = {name: [dict(r) for r in load_problems(f"{suites.PREFIX}:{name}", split="test", limit=args.limit,
                                                      seed=args.seed)] for name in names}
    args.out.mkdir(parents=True, exist_ok=True)
    for agent in agents:
        run_agent(agent, problems, args.out, args.modes, overrides=args.set, seed=args.seed, resume=args.resume,
                  batch_size=args.batch_size, **agent_kwargs)
    about = {"suite": args.suite, "split": "test", "seed": args.seed, "limit": args.limit, "overrides": args.set,
             "limit_text": f"{args.limit} problems per suite" if args.limit else
             f"{suites.DEFAULT_SIZE} problems per suite"}
    path = write_table(args.out, collect(args.out, agents, names, args.modes, pairs, about))
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
