"""GPU benchmarks (the lent H200), each printing one table with its ratios measured side by side in the same run:

    python bench/gpu.py rollout [ARGS]    # bench/gpu_rollout.py: rollouts with tool calls, against TRL's tools= loop
    python bench/gpu.py step [ARGS]       # bench/gpu_step.py: GRPO step time, ours against TRL's own generation
    python bench/gpu.py memory [ARGS]     # bench/gpu_memory.py: the 7B + 7B step's memory peak
    python bench/gpu.py profile [ARGS]    # bench/gpu_profile.py: where a graphed coder call's GPU time goes

Each file runs alone as well (`python -m bench.gpu_rollout --help`); `python -m bench.gpu MODE` is the same.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

MODES = {"rollout": "bench.gpu_rollout", "step": "bench.gpu_step", "memory": "bench.gpu_memory",
         "profile": "bench.gpu_profile"}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in MODES:
        sys.exit(__doc__)
    importlib.import_module(MODES[sys.argv[1]]).main(sys.argv[2:])


if __name__ == "__main__":
    main()
