"""Training samples: every `every`-th step, the first rollouts of the step with their rewards, as trajectory
records (`training.records`), so the viewer (`python -m delegate.training.view`) reads training and evaluation alike.

Written to `<output_dir>/samples/step-<step>.jsonl` by the main process, from its own rollouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from delegate.training.records import record, write_records


class SampleWriter:
    def __init__(self, rollout: Any, tokenizer: Any, out_dir: str | Path, every: int, per_step: int) -> None:
        self.rollout = rollout  # its `last` holds the batch being scored
        self.tokenizer = tokenizer
        self.out_dir = Path(out_dir) / "samples"
        self.every = every
        self.per_step = per_step
        self.written: set[int] = set()

    def due(self, step: int) -> bool:
        """The first scoring of a sampled step (refill rounds score again within the same step)."""
        return bool(self.every) and step % self.every == 0 and step not in self.written

    def write(self, step: int, inputs: list[dict[str, Any]], rewards: list[list[float]], names: list[str]) -> Path:
        """`inputs` (the dataset rows, `answer` and `source`) and `rewards` (one row of reward values per rollout,
        in `names` order, weighted as the trainer sums them) are this process's, aligned with `rollout.last`."""
        self.written.add(step)
        rows = []
        for trajectory, row, values in list(zip(self.rollout.last, inputs, rewards, strict=True))[: self.per_step]:
            rows.append(record(trajectory, self.tokenizer, reference=str(row.get("answer")), source=row.get("source"),
                               rewards=dict(zip(names, values, strict=True)), step=step))
        return write_records(self.out_dir / f"step-{step:06d}.jsonl", rows)
