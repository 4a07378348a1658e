"""Delegate: train LLM planners with GRPO to delegate computation to a frozen coder model and a sandbox.

    from delegate import Agent
    from delegate.executor import Sandbox, SandboxConfig
    python -m delegate.training.evaluate --config RECIPE --data DATA

The code lives in the repository's top-level folders (`executor/`, `coder/`, `planner/`, `training/`, `prompts/`);
an install maps them under this one name (`package-dir` in pyproject.toml), so none of them lands in site-packages
as a generic top-level package that a user's own `training/` folder could shadow or be shadowed by. In a checkout
without an install, this package's path reaches those folders beside it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
if not (_HERE / "planner").is_dir() and (_HERE.parent / "planner" / "engine.py").is_file():
    __path__.append(str(_HERE.parent))  # a checkout: the packages sit beside this folder

_EXPORTS = {"Agent": "delegate.planner", "AgentConfig": "delegate.planner", "Solution": "delegate.planner",
            "Sandbox": "delegate.executor", "SandboxConfig": "delegate.executor",
            "ExecutionResult": "delegate.executor", "CoderConfig": "delegate.coder", "build_coder": "delegate.coder"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """The main names, imported when first asked for: `import delegate.executor` (the sandbox's side) does not
    load the planner's torch and transformers."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'delegate' has no attribute {name!r}")
