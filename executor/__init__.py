"""Runs untrusted, model-written Python in an isolated, pre-warmed fork server. Knows nothing of models."""

from executor.config import SandboxConfig
from executor.result import STATUSES, ExecutionResult, Status
from executor.sandbox import Sandbox, SandboxError

__all__ = ["STATUSES", "ExecutionResult", "Sandbox", "SandboxConfig", "SandboxError", "Status"]
