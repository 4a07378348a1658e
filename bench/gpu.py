"""GPU benchmarks (the lent H200), each printing one table with its ratios measured side by side in the same run:

    python bench/gpu.py rollout [ARGS]    # bench/gpu_rollout.py: rollouts with tool calls, against TRL's tools= loop
    python bench/gpu.py step [ARGS]       # bench/gpu_step.py: GRPO step time, ours against TRL's own generation
    python bench/gpu.py memory [ARGS]     # bench/gpu_memory.py: the 7B + 7B step's memory peak
    python bench/gpu.py profile [ARGS]    # bench/gpu_profile.py: where a graphed coder call's GPU time goes

Each file runs alone as well (`python bench/gpu_rollout.py --help`).
"""

from __future__ import annotations

import importlib
import sys

MODES = {"rollout": "gpu_rollout", "step": "gpu_step", "memory": "gpu_memory", "profile": "gpu_profile"}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in MODES:
        sys.exit(__doc__)
    importlib.import_module(MODES[sys.argv[1]]).main(sys.argv[2:])


if __name__ == "__main__":
    main()
