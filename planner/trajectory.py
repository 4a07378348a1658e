"""`Trajectory`: the one record of a rollout that flows to rewards, logs, evaluation and the viewer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from delegate.executor import ExecutionResult

FinishReason = Literal["eos", "answer", "length", "tool_limit", "format_violation"]


@dataclass
class ToolCall:
    """One tool call: what the planner asked, the program that ran, what came back."""

    request: str  # the plain-words need (request, chat) or the planner's own program (code, repl)
    code: str  # the program the sandbox ran ("" when the call was refused before running)
    result: ExecutionResult
    cached: bool = False  # the coder answered from its cache
    error: str | None = None  # why the call was refused (empty, too long, invalid JSON, ...), if it was
    coder_failure: str | None = None  # the coder's failure ("no code in the reply", "backend: ..."), if any

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "result": self.result.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolCall:
        return cls(**{**data, "result": ExecutionResult.from_dict(data["result"])})


@dataclass
class Trajectory:
    """A rollout, token-exact. `env_mask[i]` is 1 where `completion_ids[i]` was sampled by the planner (and
    `logprobs[i]` is its log-probability) and 0 where the environment inserted it (a tool result)."""

    question: str
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    answer: str | None = None
    violations: list[str] = field(default_factory=list)  # format problems seen while generating
    rounds: int = 0

    @property
    def inserted_tokens(self) -> int:
        return len(self.env_mask) - sum(self.env_mask)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tool_calls": [call.to_dict() for call in self.tool_calls]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        return cls(**{**data, "tool_calls": [ToolCall.from_dict(c) for c in data["tool_calls"]]})


def _boxes(text: str) -> list[tuple[int, int]]:
    r"""(start of the content, index of the closing brace) of every complete `\boxed{...}`, in order of start."""
    spans = []
    start = text.find("\\boxed{")
    while start != -1:
        depth = 0
        for i in range(start + len("\\boxed"), len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    spans.append((start + len("\\boxed{"), i))
                    break
        start = text.find("\\boxed{", start + 1)
    return spans


def last_boxed(text: str) -> str | None:
    r"""The content of the last complete `\boxed{...}` in `text` (braces balanced), or None."""
    spans = _boxes(text)
    return text[spans[-1][0]: spans[-1][1]].strip() if spans else None


def boxed_end(text: str) -> int | None:
    r"""The index just past the first complete `\boxed{...}` in `text`, or None."""
    spans = _boxes(text)
    return min(end for _, end in spans) + 1 if spans else None


def segments(trajectory: Trajectory, tokenizer: Any) -> list[dict[str, Any]]:
    """The completion as runs of equal `env_mask`, each decoded on its own."""
    runs: list[dict[str, Any]] = []
    ids, mask = trajectory.completion_ids, trajectory.env_mask
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            runs.append({"text": tokenizer.decode(ids[start:i], skip_special_tokens=False),
                         "trained": bool(mask[start]), "tokens": i - start})
            start = i
    return runs
