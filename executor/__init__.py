"""Runs untrusted, model-written Python in an isolated, pre-warmed fork server. Knows nothing of models."""

from .config import SandboxConfig
from .result import STATUSES, ExecutionResult, Status
from .sandbox import Sandbox, SandboxError

__all__ = ["STATUSES", "ExecutionResult", "Sandbox", "SandboxConfig", "SandboxError", "Status"]
