"""A pytest plugin for the lent GPU machine only, which has no bubblewrap: there the sandbox's default becomes
`isolation: none` (what `--set executor.isolation=none` does for the scripts), so that the GPU tests can run.

    python3 -m pytest -p experiments.device_pytest tests/test_planner_gpu.py

Never for CI or a user's machine: there a missing isolation layer must refuse, as it does without this plugin.
"""

from __future__ import annotations

from delegate.executor.config import SandboxConfig

SandboxConfig.model_fields["isolation"].default = "none"
SandboxConfig.model_rebuild(force=True)
