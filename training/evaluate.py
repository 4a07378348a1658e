"""Evaluate an agent on a problem set: accuracy, and how it uses its tools.

    delegate eval --config RECIPE.yaml --data gsm8k [--split test] [--limit N] [--no-tools] [--set F=V] [--out DIR]
    delegate eval --config RECIPE.yaml --data unseen [--limit N] [--seed S]
    delegate eval --compare runs/eval/with-tools runs/eval/no-tools [--out DIR]
    python -m delegate.training.evaluate ...            # the same command

Runs `Agent.solve_many` over the set in batches, with a progress bar that moves as each problem finishes (not as
each batch does), and writes, in `--out`:
- `trajectories.jsonl`: every rollout as a trajectory record (`training.records`), appended batch by batch, so an
  interrupted run keeps what it did; `delegate view` turns it into an HTML report;
- `metrics.json`: accuracy with a 95 % (Wilson) interval, overall and by source (with each source's tool-call rate
  and calls per answer: calls per task type); the share of problems with a tool call; calls per answer; tool
  errors by executor status (and coder failures, refused calls); format violations by kind; mean tokens (sampled
  and inserted); seconds per problem; `behaviour`: recovery after a failed call and verification calls
  (`training.behaviour`);
- `report.md` with `accuracy_by_source.png` and `calls_per_answer.png`.

`--data unseen` (or `unseen:countdown`, `unseen:knights,letters`) evaluates on the generated suites of unseen tasks
(`training.suites`, held-out split by default, `--seed` their draw, `--limit` their size); each record is graded by
its suite's checker (`suites.grade`), every other source by `rewards.answers_match`. Each record carries its
`behaviour` flags for the viewer's filters.

`--no-tools` runs the same planner with its tool disabled (`planner.tools: false`), so the gain from delegating is
one `--compare` away. `--compare A B` writes `comparison.md` and `comparison.png` from two runs' `metrics.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delegate.training import behaviour
from delegate.training.stats import paired, wilson

log = logging.getLogger("training.evaluate")


def _accuracy(records: list[dict[str, Any]]) -> dict[str, Any]:
    right = sum(bool(r["correct"]) for r in records)
    return {"n": len(records), "accuracy": right / len(records) if records else 0.0,
            "accuracy_ci95": list(wilson(right, len(records)))}


def summarize(records: list[dict[str, Any]], seconds: float | None = None) -> dict[str, Any]:
    """The metrics of a set of trajectory records (what `metrics.json` holds)."""
    from delegate.training.rewards import format_violations

    n = len(records)
    calls = [c for r in records for c in r["tool_calls"]]
    outcome = Counter("refused" if c.get("error") else "coder_failure" if c.get("coder_failure")
                      else c["result"]["status"] for c in calls)
    violations = Counter(v for r in records for v in format_violations(r["text"], r["violations"]))
    sources = sorted({r.get("source") or "" for r in records})
    behaved = behaviour.summarize(records)
    per_source = behaved.pop("by_source")
    metrics = {
        **_accuracy(records),
        "answered_rate": sum(r["answer"] is not None for r in records) / n if n else 0.0,
        "tool_call_rate": sum(bool(r["tool_calls"]) for r in records) / n if n else 0.0,
        "calls_per_answer": len(calls) / n if n else 0.0,
        "calls_histogram": dict(sorted(Counter(len(r["tool_calls"]) for r in records).items())),
        "tool_error_rate": (len(calls) - outcome["ok"]) / len(calls) if calls else 0.0,
        "tool_outcomes": {k: v / len(calls) for k, v in sorted(outcome.items())} if calls else {},
        "format_violation_rate": sum(bool(format_violations(r["text"], r["violations"])) for r in records) / n
        if n else 0.0,
        "format_violations": {k: v / n for k, v in sorted(violations.items())},
        "finish_reasons": {k: v / n for k, v in sorted(Counter(r["finish_reason"] for r in records).items())},
        "mean_sampled_tokens": sum(sum(r["env_mask"]) for r in records) / n if n else 0.0,
        "mean_inserted_tokens": sum(len(r["env_mask"]) - sum(r["env_mask"]) for r in records) / n if n else 0.0,
        "by_source": {s: {**per_source[s], **_accuracy([r for r in records if (r.get("source") or "") == s])}
                      for s in sources},
        "behaviour": behaved,
    }
    if seconds is not None:
        metrics["seconds"] = seconds
        metrics["seconds_per_problem"] = seconds / n if n else 0.0
    return metrics


def run(agent: Any, problems: list[dict[str, Any]], out: Path, batch_size: int) -> dict[str, Any]:
    """Solve every problem, appending records to `out/trajectories.jsonl` batch by batch; the metrics. The bar
    moves as each problem finishes (`Agent.solve_many`'s `on_finish`): a batch can take minutes."""
    from tqdm.auto import tqdm

    from delegate.training.records import write_records

    path = out / "trajectories.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    records: list[dict[str, Any]] = []
    started = time.monotonic()
    with tqdm(total=len(problems), desc="evaluate", unit="problem") as bar:
        for start in range(0, len(problems), batch_size):
            chunk = problems[start:start + batch_size]
            solutions = agent.solve_many([p["prompt"] for p in chunk], on_finish=lambda _: bar.update())
            rows = [graded_record(s.trajectory, agent.tokenizer, p) for p, s in zip(chunk, solutions, strict=True)]
            write_records(path, rows, append=True)
            records += rows
            bar.set_postfix(accuracy=f"{sum(bool(r['correct']) for r in records) / len(records):.1%}")
    return summarize(records, time.monotonic() - started)


def graded_record(trajectory: Any, tokenizer: Any, problem: dict[str, Any]) -> dict[str, Any]:
    """The trajectory record of one problem, graded by its suite's checker (`suites.grade`) or `answers_match`,
    with its `behaviour` flags."""
    from delegate.training.records import record
    from delegate.training.suites import grade, suite_of

    source = problem.get("source")
    suite = suite_of(source) is not None  # a suite's reference is no formula: the record's own grading is skipped
    row = record(trajectory, tokenizer, reference=None if suite else problem["answer"], source=source)
    if suite:
        row["reference"] = problem["answer"]
        row["correct"] = grade(problem["answer"], trajectory.answer, source)
    row["behaviour"] = behaviour.rollout_behaviour(row)
    return row


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def metrics_table(named: dict[str, dict[str, Any]]) -> str:
    """A Markdown table with one column per run."""
    rows = [("problems", lambda m: str(m["n"])),
            ("accuracy", lambda m: f"{percent(m['accuracy'])} [{percent(m['accuracy_ci95'][0])}, "
                                   f"{percent(m['accuracy_ci95'][1])}]"),
            ("answered", lambda m: percent(m["answered_rate"])),
            ("tool-call rate", lambda m: percent(m["tool_call_rate"])),
            ("calls per answer", lambda m: f"{m['calls_per_answer']:.2f}"),
            ("tool error rate", lambda m: percent(m["tool_error_rate"])),
            ("right after a failed call", lambda m: _behaviour(m, "recovered_rate")),
            ("retried with a change", lambda m: _behaviour(m, "retried_changed_rate")),
            ("verification calls (of calls)", lambda m: _behaviour(m, "verification_share")),
            ("format violations", lambda m: percent(m["format_violation_rate"])),
            ("sampled tokens (mean)", lambda m: f"{m['mean_sampled_tokens']:.1f}"),
            ("inserted tokens (mean)", lambda m: f"{m['mean_inserted_tokens']:.1f}"),
            ("seconds per problem", lambda m: f"{m.get('seconds_per_problem', float('nan')):.2f}")]
    lines = ["| metric | " + " | ".join(named) + " |", "|---|" + "---|" * len(named)]
    lines += [f"| {label} | " + " | ".join(cell(m) for m in named.values()) + " |" for label, cell in rows]
    return "\n".join(lines)


def _behaviour(metrics: dict[str, Any], key: str) -> str:
    """A behaviour share with its base; "n/a" for runs measured before behaviour was (or with nothing to count)."""
    found = metrics.get("behaviour")
    if found is None:
        return "n/a"
    base = found["rollouts_with_failed_call"] if key.startswith(("recovered", "retried")) else None
    if base == 0:
        return "n/a (no failed call)"
    if not metrics.get("calls_per_answer"):
        return "n/a (no call)"
    return percent(found[key]) + (f" of {base}" if base is not None else "")


def _figure(width: float, height: float) -> tuple[Any, Any]:
    """A figure and its axes outside pyplot: no global backend switch, so notebooks keep theirs."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def plot_by_source(named: dict[str, dict[str, Any]], path: Path) -> Path:
    """Accuracy by source with 95 % intervals, one bar per run and source."""
    sources = sorted({s for m in named.values() for s in m["by_source"]})
    fig, ax = _figure(max(4.0, 1.2 * len(sources) * len(named) + 2), 3.5)
    width = 0.8 / len(named)
    for k, (name, m) in enumerate(named.items()):
        xs = [i + k * width for i in range(len(sources))]
        cells = [m["by_source"].get(s, {"accuracy": 0.0, "accuracy_ci95": [0.0, 0.0]}) for s in sources]
        acc = [c["accuracy"] for c in cells]
        errors = [[c["accuracy"] - c["accuracy_ci95"][0] for c in cells],
                  [c["accuracy_ci95"][1] - c["accuracy"] for c in cells]]
        ax.bar(xs, acc, width, yerr=errors, capsize=3, label=name)
    ax.set_xticks([i + width * (len(named) - 1) / 2 for i in range(len(sources))], sources, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% interval)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_calls(named: dict[str, dict[str, Any]], path: Path) -> Path:
    """The histogram of tool calls per answer, one bar group per run."""
    counts = sorted({int(c) for m in named.values() for c in m["calls_histogram"]})
    fig, ax = _figure(5, 3.2)
    width = 0.8 / len(named)
    for k, (name, m) in enumerate(named.items()):
        hist = {int(c): v for c, v in m["calls_histogram"].items()}
        ax.bar([c + k * width for c in counts], [hist.get(c, 0) / m["n"] for c in counts], width, label=name)
    ax.set_xticks([c + width * (len(named) - 1) / 2 for c in counts], [str(c) for c in counts])
    ax.set_xlabel("tool calls in the answer")
    ax.set_ylabel("share of problems")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_report(out: Path, name: str, metrics: dict[str, Any], about: str) -> Path:
    named = {name: metrics}
    plot_by_source(named, out / "accuracy_by_source.png")
    plot_calls(named, out / "calls_per_answer.png")
    outcomes = ", ".join(f"{k} {percent(v)}" for k, v in metrics["tool_outcomes"].items()) or "no calls"
    kinds = ", ".join(f"{k} {percent(v)}" for k, v in metrics["format_violations"].items()) or "none"
    by_source = "\n".join(f"| {s} | {m['n']} | {percent(m['accuracy'])} [{percent(m['accuracy_ci95'][0])}, "
                          f"{percent(m['accuracy_ci95'][1])}] | {percent(m['tool_call_rate'])} | "
                          f"{m['calls_per_answer']:.2f} | {percent(m['failed_call_rate'])} | "
                          f"{percent(m['verification_share'])} |" for s, m in metrics["by_source"].items())
    text = (f"# Evaluation: {name}\n\n{about}\n\n{metrics_table(named)}\n\nTool calls by outcome: {outcomes}.\n\n"
            f"Format violations (share of problems): {kinds}.\n\n{behaviour_text(metrics['behaviour'])}\n\n"
            "| source | problems | accuracy | tool-call rate | calls per answer | with a failed call | verification "
            f"calls |\n|---|---|---|---|---|---|---|\n{by_source}\n\n![accuracy by source](accuracy_by_source.png)\n\n"
            f"![calls per answer](calls_per_answer.png)\n\nTrajectories: `trajectories.jsonl` "
            f"(`python -m delegate.training.view {out / 'trajectories.jsonl'} -o {out / 'report.html'}`).\n")
    path = out / "report.md"
    path.write_text(text)
    return path


def behaviour_text(found: dict[str, Any]) -> str:
    """The report's paragraph on recovery and verification (`training.behaviour`)."""
    failed = found["rollouts_with_failed_call"]
    recovery = (f"Of the {failed} rollouts with a failed call (refused, coder failure, error, timeout or no output), "
                f"{percent(found['recovered_rate'])} still end right; {percent(found['retried_changed_rate'])} call "
                f"again with a changed request or program, {percent(found['retried_same_rate'])} only repeat it."
                if failed else "No rollout had a failed call.")
    return (f"{recovery} Verification calls (after an answer is stated, or a program checking a candidate): "
            f"{found['verification_calls']} ({percent(found['verification_share'])} of calls; "
            f"{found['after_answer_calls']} after a stated answer, {found['checking_programs']} checking "
            f"programs), in {percent(found['verifying_rollout_rate'])} of rollouts.")


def compare(runs: list[Path], out: Path) -> Path:
    """`comparison.md` and `comparison.png` from the runs' `metrics.json` (named by their directories)."""
    named = {}
    for run_dir in runs:
        metrics_path = run_dir / "metrics.json"
        if not metrics_path.exists():
            raise FileNotFoundError(f"{metrics_path} not found: is {run_dir} an evaluation's --out directory?")
        named[run_dir.name if run_dir.name not in named else str(run_dir)] = json.loads(metrics_path.read_text())
    correct = _paired_correctness(runs)
    out.mkdir(parents=True, exist_ok=True)
    plot_by_source(named, out / "comparison.png")
    plot_calls(named, out / "comparison_calls.png")
    names = list(named)
    result = paired(correct[0], correct[-1])
    (out / "comparison.json").write_text(json.dumps({"before": names[0], "after": names[-1], **result}, indent=1))
    low, high = result["ci95"]
    text = (f"# Comparison\n\n{metrics_table(named)}\n\nAccuracy of {names[-1]} minus {names[0]}, paired over the "
            f"same {result['n']} problems: {100 * result['delta']:+.1f} points (95% paired bootstrap interval "
            f"{100 * low:+.1f} to {100 * high:+.1f}); {result['gained']} problems gained, {result['lost']} lost "
            f"(McNemar's exact test p = {result['mcnemar_p']:.3g})."
            f"\n\n![accuracy by source](comparison.png)\n\n![calls per answer](comparison_calls.png)\n")
    path = out / "comparison.md"
    path.write_text(text)
    return path


def agent_name(config: str | Path) -> str:
    """A name for the agent of `config`: the recipe's stem, or for a trained agent's `agent.yaml` (every GRPO run
    writes one) its run directory's name, so that two agents' evaluations do not share a folder."""
    path = Path(config)
    return path.parent.name if path.stem == "agent" and path.parent.name else path.stem


def _records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "trajectories.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a paired comparison needs each run's trajectories")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _paired_correctness(runs: list[Path]) -> list[list[bool]]:
    """Each run's correctness in one fixed problem order (sorted by question and reference), so that runs line up
    pair by pair; refused unless every run holds the same problems as the first."""
    keyed = [sorted((((r["question"], str(r.get("reference"))), bool(r["correct"])) for r in _records(run)),
                    key=lambda pair: pair[0]) for run in runs]  # by problem only: duplicates keep file order
    if any([key for key, _ in k] != [key for key, _ in keyed[0]] for k in keyed[1:]):
        raise ValueError(f"{runs[0]} and {runs[-1]} were evaluated on different problems: a comparison is only "
                         "meaningful over the same set (same data, limit, filters and big-value seed)")
    return [[correct for _, correct in k] for k in keyed]


def load_set(args: argparse.Namespace) -> list[dict[str, Any]]:
    from delegate.training.data import load_problems

    dataset = load_problems(args.data, schema=args.schema, split=args.split, levels=args.levels, limit=args.limit,
                            filters=not args.no_filters, big_values=args.big_values, seed=args.seed)
    return [dict(row) for row in dataset]


def evaluate(config: str | Path, problems: list[dict[str, Any]], out: Path, *, no_tools: bool = False,
             batch_size: int | None = None, overrides: Sequence[str] = (), **agent_kwargs: Any) -> dict[str, Any]:
    """Evaluate the agent of `config` on `problems` (dicts with `prompt`, `answer`, `source`); write the run's
    files in `out`; the metrics."""
    from delegate.planner import Agent, AgentConfig

    agent_config = AgentConfig.from_yaml(config, overrides)
    if no_tools:
        agent_config = agent_config.model_copy(update={"planner": agent_config.planner.model_copy(
            update={"tools": False})})
    with Agent(agent_config, **agent_kwargs) as agent:
        metrics = run(agent, problems, out, batch_size or agent_config.planner.batch_size)
    metrics["config"] = str(config)
    metrics["tools"] = not no_tools
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    about = f"Agent: `{config}`{' with its tool disabled (`--no-tools`)' if no_tools else ''}."
    write_report(out, out.name, metrics, about)
    log.info("accuracy %.1f%% on %d problems, tool-call rate %.1f%%, report %s", 100 * metrics["accuracy"],
             metrics["n"], 100 * metrics["tool_call_rate"], out / "report.md")
    return metrics


def main(argv: list[str] | None = None, prog: str | None = None, **agent_kwargs: Any) -> Path:
    """`delegate eval`: evaluate a recipe on a data set, or `--compare` two runs. `agent_kwargs` go to `Agent`
    (e.g. the tests' scripted logits processors)."""
    from delegate.cli import add_recipe_arguments, load_config, setup_logging
    from delegate.planner.config import AgentConfig

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_recipe_arguments(parser, required=False, config_help="a recipe (its planner, coder and executor sections)")
    parser.add_argument("--data", help="a source name (gsm8k, math, ...), a generated suite (unseen, "
                        "unseen:countdown, ...), a hub id, or a local JSON/JSONL/Parquet")
    parser.add_argument("--schema", help="the source whose schema a local file has (detected when left out)")
    parser.add_argument("--split", default="test", help="the hub split (default: test)")
    parser.add_argument("--levels", type=int, nargs="+", help="MATH levels to keep, e.g. 3 4 5")
    parser.add_argument("--limit", type=int, help="the first N problems")
    parser.add_argument("--no-filters", action="store_true", help="keep multiple-choice, proofs and the rest")
    parser.add_argument("--big-values", action="store_true", help="rebuild GSM8K-schema data as big-value GSM8K")
    parser.add_argument("--seed", type=int, default=0, help="the big values' or the suites' seed")
    parser.add_argument("--no-tools", action="store_true", help="the same planner with its tool disabled")
    parser.add_argument("--batch-size", type=int, help="problems per solve_many call (default: planner.batch_size)")
    parser.add_argument("--out", type=Path, help="the run's directory (default: runs/eval/<recipe>-<data>)")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("RUN_A", "RUN_B"))
    args = parser.parse_args(argv)
    setup_logging()
    if args.compare:
        path = compare(args.compare, args.out or args.compare[1].parent)
        print(path.read_text())
        return path
    if not (args.config and args.data):
        parser.error("--config and --data are needed (or --compare RUN_A RUN_B)")
    load_config(parser, args, AgentConfig.from_yaml)  # a wrong field stops here, before any data or model loads
    out = args.out or Path("runs/eval") / f"{agent_name(args.config)}-{Path(args.data).stem.replace(':', '-')}" \
        f"{'-big-values' if args.big_values else ''}{'-no-tools' if args.no_tools else ''}"
    problems = load_set(args)
    if not problems:
        parser.error(f"{args.data}: no problems left to evaluate")
    evaluate(args.config, problems, out, no_tools=args.no_tools, batch_size=args.batch_size, overrides=args.set,
             **agent_kwargs)
    print((out / "report.md").read_text())
    return out


if __name__ == "__main__":
    main()
