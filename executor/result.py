"""The record of one job and the text the planner sees of it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["ok", "error", "timeout", "memory", "output_limit", "crashed"]
STATUSES: tuple[Status, ...] = ("ok", "error", "timeout", "memory", "output_limit", "crashed")


def clip(text: str, max_chars: int) -> str:
    """Keep the head and the tail of `text` within `max_chars`, marking the cut."""
    if len(text) <= max_chars:
        return text
    marker = f"\n…[{len(text) - max_chars} chars cut]…\n"
    keep = max(max_chars - len(marker), 2)
    return text[: keep // 2] + marker + text[len(text) - (keep - keep // 2):]


@dataclass(frozen=True)
class ExecutionResult:
    """What one job did. `status` is derived by the sandbox's server, never by the job itself.

    `error` is a one-line summary for anything but "ok": the exception's last traceback line (with the
    failing line number when known), the time limit, the signal that killed the job, or the output limit.
    """

    status: Status
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    duration_s: float = 0.0
    exit_code: int | None = None
    signal: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def render(self, max_chars: int = 2000) -> str:
        """The short text the planner sees: stdout, then the error line if the job failed."""
        out = self.stdout.rstrip()
        if self.status == "ok":
            return clip(out, max_chars) if out else "no output"
        parts = [out] if out else []
        parts.append(self.error or self.status)
        return clip("\n".join(parts), max_chars)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExecutionResult:
        return cls(**data)

    @classmethod
    def crashed(cls, reason: str, duration_s: float = 0.0) -> ExecutionResult:
        return cls(status="crashed", error=f"crashed: {reason}", duration_s=duration_s)
