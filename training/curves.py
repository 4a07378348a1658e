"""Training curves of a GRPO run, drawn from the trainer's log history: the weighted reward (and that of the
rollouts with and without tool calls), each reward function's mean, tool use (calls per rollout, error rate),
completion length and the share of groups filtered out.

`training/grpo.py` redraws `<output_dir>/curves.png` at every checkpoint and at the end; for a run cut short, draw
them from its latest checkpoint:

    python -m delegate.training.curves runs/qwen2.5-0.5b-request            # -> runs/qwen2.5-0.5b-request/curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PANELS = [  # (title, log keys drawn in it; a key ending in "*" stands for every key with that prefix)
    ("reward (weighted sum)", ["reward", "rewards/with_calls", "rewards/without_calls"]),
    ("each reward's mean", ["rewards/*"]),
    ("tool calls per rollout", ["tools/calls_per_rollout"]),
    ("tool errors (share of calls)", ["tools/error_rate"]),
    ("completion tokens (mean)", ["completions/mean_length"]),
    ("groups filtered out (share)", ["groups/removed_frac"]),
]


def _series(history: list[dict[str, Any]], key: str) -> dict[str, list[tuple[int, float]]]:
    keys = sorted({k for e in history for k in e if k.startswith(key[:-1]) and k.endswith("/mean")}) \
        if key.endswith("*") else [key]
    return {k: [(int(e["step"]), float(e[k])) for e in history if k in e and "step" in e] for k in keys}


def plot_history(history: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """`history`: the trainer's `state.log_history`. Writes `path` (PNG) and returns it; None with nothing logged."""
    if not any("reward" in e for e in history):
        return None
    from matplotlib.figure import Figure  # outside pyplot: no global backend switch, so notebooks keep theirs
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(15, 7))
    axes = fig.subplots(2, 3)
    for ax, (name, keys) in zip(axes.flat, PANELS, strict=True):
        lines = 0
        for key in keys:
            for label, points in _series(history, key).items():
                if points:
                    short = label.removeprefix("rewards/").removesuffix("/mean")
                    ax.plot(*zip(*points, strict=True), marker=".", label=short)
                    lines += 1
        ax.set_title(name)
        ax.set_xlabel("GRPO step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if lines > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def latest_history(run: Path) -> list[dict[str, Any]]:
    """The log history of a run directory's latest checkpoint (`checkpoint-N/trainer_state.json`)."""
    states = sorted(run.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1]))
    if not states:
        raise FileNotFoundError(f"no checkpoint-*/trainer_state.json under {run}")
    return json.loads(states[-1].read_text())["log_history"]


def main(argv: list[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a GRPO run's output directory")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN/curves.png")
    args = parser.parse_args(argv)
    path = plot_history(latest_history(args.run), args.out or args.run / "curves.png", str(args.run))
    print(path or "nothing logged yet")
    return path


if __name__ == "__main__":
    main()
