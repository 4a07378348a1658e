"""Tool protocols: how a tool call looks in the planner's text, and what is inserted after it.

Inline protocols (`request`, `code`, `repl`) mark a call with configurable markers and insert the result between
result markers. `chat` uses the chat template's native tool call to one tool, `ask_coder(request: str)`, and
inserts exactly what the template renders for a tool turn (derived from the template, not written here).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

ProtocolName = Literal["request", "code", "chat", "repl"]

ASK_CODER = {
    "type": "function",
    "function": {
        "name": "ask_coder",
        "description": "Ask a programmer to compute something. Describe the value you need in plain words; "
                       "they write and run a Python program and return what it prints.",
        "parameters": {"type": "object", "required": ["request"],
                       "properties": {"request": {"type": "string",
                                                  "description": "the value to compute, in plain words"}}},
    },
}


class Markers(BaseModel):
    """Where a call starts and ends, and how a result is wrapped. Defaults depend on the protocol."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    open: str
    close: str
    result_open: str
    result_close: str


DEFAULT_MARKERS = {
    "request": Markers(open="<request>", close="</request>", result_open="<result>\n", result_close="\n</result>\n"),
    # What real Qwen2.5 models write unprompted, and call with (bench/results/gpu-real-prompts.md): a fenced block.
    # The close marker holds the newline after the fence, so that the opening fence ("\n```python") is no stop.
    "code": Markers(open="```python\n", close="\n```\n", result_open="```output\n", result_close="\n```\n"),
    "repl": Markers(open=">>> ", close="\n", result_open="", result_close="\n"),
    "chat": Markers(open="<tool_call>", close="</tool_call>", result_open="<tool_response>",
                    result_close="</tool_response>"),
}
# DESIGN.md's first code markers, which Qwen2.5 never writes unprompted; the toy world is trained on them
CODE_TAGS = Markers(open="<code>", close="</code>", result_open="<result>\n", result_close="\n</result>\n")


# Format problems the engine records on a trajectory (`Trajectory.violations`), with what each means. Rewards
# (`training.rewards.FORMAT_PENALTIES`) and the logged metrics read the same names.
VIOLATIONS = {
    "planner_wrote_result": "the planner wrote a result marker itself (the rollout ends)",
    "unclosed_call": "the budget ran out inside a call",
    "nested_open": "a call opened inside another",
    "empty_call": "a call with nothing in it",
    "call_too_long": "a call over max_request_chars",
    "invalid_json": "a chat tool call that is not JSON",
    "unknown_tool": "a chat tool call to a tool other than ask_coder",
    "bad_arguments": "a chat tool call without a request string",
    "over_tool_limit": "a call past max_tool_calls",
    "repeated_call": "a call the same rollout already made, word for word",
    "request_without_numbers": "a request to a coder that cannot see the question, with no number in it",
    "unparsed_call": "a call in a form the protocol does not parse (a ```python fence in code or request mode, "
                     "fenced JSON in chat mode): nothing runs it",
    "eos_after_result": "the planner stopped right after a result, with no answer",
}
_FENCED_CODE = re.compile(r"```(?:python|py)\s*\n")
_FENCED_JSON = re.compile(r"```(?:json)?\s*\n\s*\{\s*\"name\"")


@dataclass(frozen=True)
class Call:
    """A complete call found at the end of the planner's text."""

    text: str  # the request (request, chat) or the program (code, repl)
    error: str | None = None  # a refusal the planner sees as a tool error instead of a run
    violations: tuple[str, ...] = ()


class Protocol:
    """The inline mechanism: `open` ... `close`, answered by `result_open` result `result_close`."""

    def __init__(self, name: ProtocolName, markers: Markers, max_request_chars: int) -> None:
        self.name = name
        self.markers = markers
        self.max_request_chars = max_request_chars
        self.uses_coder = name in ("request", "chat")

    @property
    def stop_strings(self) -> list[str]:
        """Generation pauses at the end of a call, and at a result marker the planner must not write."""
        stops = [self.markers.close]
        if self.markers.result_open.strip():
            stops.append(self.markers.result_open.strip())
        return stops

    def prompt_text(self, tokenizer: Any, system_prompt: str, question: str) -> str:
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def wrote_result(self, segment: str) -> bool:
        marker = self.markers.result_open.strip()
        return bool(marker) and marker in segment

    def find_call(self, segment: str) -> Call | None:
        """The call that `segment` (the text since the last insertion) ends with, if any."""
        m = self.markers
        end = segment.rfind(m.close)
        if end == -1:
            return None
        start = segment.rfind(m.open, 0, end)
        if start == -1:
            return None  # a stray close marker is text; generation goes on
        violations = ("nested_open",) if segment.count(m.open, 0, end) > 1 else ()
        return self._check(segment[start + len(m.open): end].strip(), violations)

    def _check(self, text: str, violations: tuple[str, ...]) -> Call:
        if not text:
            return Call(text, error="empty request: say what to compute", violations=(*violations, "empty_call"))
        if len(text) > self.max_request_chars:
            return Call(text, error=f"request too long ({len(text)} characters; the limit is "
                                    f"{self.max_request_chars})", violations=(*violations, "call_too_long"))
        return Call(text, violations=violations)

    def open_call(self, segment: str) -> bool:
        """True if `segment` ends inside an unclosed call (cut by the token budget)."""
        return segment.rfind(self.markers.open) > segment.rfind(self.markers.close)

    def render_result(self, text: str) -> str:
        return f"{self.markers.result_open}{text}{self.markers.result_close}"

    def unparsed_call(self, planner_text: str) -> bool:
        """Whether the planner's own text holds a call in a form this protocol does not run: real Qwen2.5 models
        write ```python fences in code and request mode and fenced JSON in chat mode unprompted."""
        if self.name in ("code", "request") and "```" not in self.markers.open:
            return bool(_FENCED_CODE.search(planner_text))
        if self.name == "chat":
            return bool(_FENCED_JSON.search(planner_text))
        return False

    def program(self, call: Call) -> str:
        """What the sandbox runs for a call that needs no coder."""
        return call.text


class ReplProtocol(Protocol):
    """The seed's one-line REPL: a line `>>> expr` is answered on the next line, as the interpreter would."""

    def find_call(self, segment: str) -> Call | None:
        if not segment.endswith(self.markers.close):
            return None
        line = segment[: -len(self.markers.close)].rsplit("\n", 1)[-1]
        if not line.startswith(self.markers.open):
            return None  # an ordinary line: generation goes on
        return self._check(line[len(self.markers.open):].strip(), ())

    def open_call(self, segment: str) -> bool:
        return segment.rsplit("\n", 1)[-1].startswith(self.markers.open)

    def program(self, call: Call) -> str:
        # 'single' mode prints the value of an expression statement, exactly like the interactive prompt.
        return f"exec(compile({call.text!r}, '<repl>', 'single'))"


class ChatProtocol(Protocol):
    """Native tool calls through the chat template, to the single tool `ask_coder(request: str)`."""

    SENTINEL = "\x00RESULT\x00"

    def __init__(self, markers: Markers, max_request_chars: int, tokenizer: Any) -> None:
        super().__init__("chat", markers, max_request_chars)
        self.before, self.after = self._template_insertion(tokenizer)

    def _template_insertion(self, tokenizer: Any) -> tuple[str, str]:
        """Render a conversation with and without a tool turn; what the tool turn adds (plus the end of the
        assistant turn after the call's close marker) is what gets inserted, split around the result."""
        call = {"type": "function", "function": {"name": "ask_coder", "arguments": {"request": "x"}}}
        history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
        base = tokenizer.apply_chat_template(history, tools=[ASK_CODER], tokenize=False)
        full = tokenizer.apply_chat_template([*history, {"role": "tool", "content": self.SENTINEL}],
                                             tools=[ASK_CODER], tokenize=False, add_generation_prompt=True)
        close_at = base.rfind(self.markers.close)
        if not full.startswith(base) or close_at == -1 or self.SENTINEL not in full:
            raise ValueError("the chat template does not render tool calls as the chat protocol expects "
                             f"(close marker {self.markers.close!r}); use the request protocol with this model")
        inserted = base[close_at + len(self.markers.close):] + full[len(base):]
        before, after = inserted.split(self.SENTINEL)
        return before, after

    @property
    def stop_strings(self) -> list[str]:
        return [self.markers.close, self.markers.result_open]

    def prompt_text(self, tokenizer: Any, system_prompt: str, question: str) -> str:
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tools=[ASK_CODER], tokenize=False, add_generation_prompt=True)

    def wrote_result(self, segment: str) -> bool:
        return self.markers.result_open in segment

    def find_call(self, segment: str) -> Call | None:
        m = self.markers
        end = segment.rfind(m.close)
        start = segment.rfind(m.open, 0, end) if end != -1 else -1
        if start == -1:
            return None
        body = segment[start + len(m.open): end].strip()
        try:
            payload = json.loads(body)
        except json.JSONDecodeError as exc:
            return Call(body, error=f"invalid tool call: not JSON ({exc.msg} at character {exc.pos})",
                        violations=("invalid_json",))
        if not isinstance(payload, dict) or payload.get("name") != "ask_coder":
            name = payload.get("name") if isinstance(payload, dict) else None
            return Call(body, error=f"invalid tool call: unknown tool {name!r}; the only tool is ask_coder",
                        violations=("unknown_tool",))
        arguments = payload.get("arguments")
        if isinstance(arguments, str):  # some models send arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                arguments = None
        request = arguments.get("request") if isinstance(arguments, dict) else None
        if not isinstance(request, str):
            return Call(body, error='invalid tool call: arguments must be {"request": "<what to compute>"}',
                        violations=("bad_arguments",))
        return self._check(request.strip(), ())

    def render_result(self, text: str) -> str:
        return f"{self.before}{text}{self.after}"


def build_protocol(name: ProtocolName, markers: Markers | None, max_request_chars: int, tokenizer: Any) -> Protocol:
    chosen = markers or DEFAULT_MARKERS[name]
    if name == "chat":
        return ChatProtocol(chosen, max_request_chars, tokenizer)
    if name == "repl":
        return ReplProtocol(name, chosen, max_request_chars)
    return Protocol(name, chosen, max_request_chars)
