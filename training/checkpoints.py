"""Which checkpoint a run resumes from (stdlib only: the block driver reads it on a machine before any install)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def latest_complete_checkpoint(output_dir: Path) -> Path:
    """The newest `checkpoint-N` in `output_dir` that was written to the end. transformers writes
    `trainer_state.json` after the adapter, optimizer, scheduler and RNG state, and on resume takes the newest
    folder whatever it holds: a run killed while saving would restart from step 0 with no optimizer state."""
    found = sorted((int(p.name.split("-")[-1]), p) for p in output_dir.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[-1].isdigit())
    for _, path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            log.warning("resume: %s was not written to the end (no readable trainer_state.json); skipping it", path)
            continue
        return path
    raise ValueError(f"resume: no complete checkpoint in {output_dir} (a checkpoint-N folder with its "
                     "trainer_state.json): nothing to resume from")
