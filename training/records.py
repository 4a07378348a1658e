"""Trajectory records: the JSONL that evaluation and training write and the viewer reads.

One line per rollout: the `Trajectory` (token ids, log-probabilities, `env_mask`, text, tool calls, finish reason,
answer, violations) plus what a reader wants next to it:
- `segments`: the completion cut where `env_mask` changes, each run decoded on its own, `trained` true for the
  planner's sampled tokens and false for what the environment inserted (the tokens out of the loss);
- `reference`, `source`, `correct` (the `correctness` reward's verdict);
- `rewards` (each reward function's value as the trainer summed it, the schedule's weight applied; training
  only) and `step` (the training step), when known.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from delegate.planner.trajectory import Trajectory, segments
from delegate.training.rewards import answers_match


def record(trajectory: Trajectory, tokenizer: Any, *, reference: str | None = None, source: str | None = None,
           rewards: dict[str, float] | None = None, step: int | None = None) -> dict[str, Any]:
    """One JSONL line for `trajectory`."""
    return {**trajectory.to_dict(), "segments": segments(trajectory, tokenizer), "reference": reference,
            "source": source, "correct": answers_match(reference, trajectory.answer) if reference is not None
            else None, "rewards": rewards, "step": step}


def write_records(path: str | Path, records: Iterable[dict[str, Any]], append: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as f:
        for line in records:
            f.write(json.dumps(line) + "\n")
    return path


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file; a line that is not a JSON object fails naming the file and line."""
    records = []
    with Path(path).open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from error
            if not isinstance(item, dict) or "completion_ids" not in item:
                raise ValueError(f"{path}:{number}: not a trajectory record")
            records.append(item)
    return records
