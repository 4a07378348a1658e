"""Drive a model through a scripted transcript with a logits processor, recording what it forced.

For tests and benchmarks: it makes a tiny random model emit real tool markers, so the whole loop runs for real.

A script is a list of parts: `Say(text)` the planner must write, `Tokens(ids)` it must write token by token
(for byte tokens that are not valid UTF-8 on their own), and `Env(end)` for text the environment inserts, known
only by how it ends. After the last part the model is forced to EOS.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

FREE = -1  # next_token's answer once the script is over and `then="free"`: the model samples on its own


@dataclass(frozen=True)
class Say:
    text: str


@dataclass(frozen=True)
class Tokens:
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Env:
    end: str


class ScriptedText(LogitsProcessor):
    def __init__(self, tokenizer, scripts: dict[tuple[int, ...], list], then: str = "eos") -> None:
        """`then`: after the script, force EOS ("eos") or let the model sample on its own ("free")."""
        self.then = then
        self.tokenizer = tokenizer
        self.scripts = scripts  # prompt ids -> parts
        self.forced: dict[tuple[int, ...], list[int]] = {prompt: [] for prompt in scripts}
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id

    def _prompt(self, row: list[int]) -> tuple[tuple[int, ...], int]:
        """The row's prompt, and where it starts (after the left padding)."""
        start = 0
        while start < len(row) and row[start] == self.pad:
            start += 1
        for prompt in self.scripts:
            if tuple(row[start:start + len(prompt)]) == prompt:
                return prompt, start
        raise AssertionError("a row with no script")

    def next_token(self, prompt: tuple[int, ...], completion: list[int]) -> int | None:
        """The token the script wants next; None when the row waits for the environment (it has just stopped
        at a call; generate pads it from here on); `FREE` when the script is over and sampling is left free."""
        text = self.tokenizer.decode(completion, skip_special_tokens=False)
        pos = 0
        for part in self.scripts[prompt]:
            if isinstance(part, Env):
                end = text.find(part.end, pos)
                if end == -1:
                    return None
                pos = end + len(part.end)
                continue
            target = part.text if isinstance(part, Say) else self._decode(part.ids)
            written = text[pos:]
            if written.startswith(target):
                pos += len(target)
                continue
            assert target.startswith(written), f"off script: wrote {written!r}, expected {target!r}"
            if isinstance(part, Say):
                return self.tokenizer(target[len(written):], add_special_tokens=False)["input_ids"][0]
            return next(part.ids[k] for k in range(len(part.ids)) if self._decode(part.ids[:k]) == written)
        return self.eos if self.then == "eos" else FREE

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        forced = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids.tolist()):
            prompt, start = self._prompt(ids)
            completion = ids[start + len(prompt):]
            token = None
            if not completion or completion[-1] not in (self.pad, self.eos):  # finished rows are padded
                # A row resumed from a kept KV cache carries masked holes (pads after its earlier stop): not text.
                token = self.next_token(prompt, [t for t in completion if t != self.pad])
            if token == FREE:  # leave this row's scores alone
                forced[row] = scores[row]
                continue
            if token is None:
                token = self.pad
            else:
                self.forced[prompt].append(token)
            forced[row, token] = 0.0
        return forced


class CallWatch:
    """Tells a logits processor when `generate` starts a new call: within a call each step's input is one token
    wider than the last at the same batch size."""

    _width = _batch = -1

    def new_call(self, input_ids: torch.Tensor) -> bool:
        batch, width = input_ids.shape
        new = not (width == self._width + 1 and batch == self._batch)
        self._width, self._batch = width, batch
        return new


class PlannedScript(CallWatch, LogitsProcessor):
    """A fast forcer for benchmarks: each prompt's script is a list of token lists, one per generation round (the
    planner writes list k in its k-th round, then EOS once the last is written). The rows' plan is built once
    per `generate` call (Python per row); every decoding step is then one gather and one scatter on the GPU, so a
    benchmark measures the model and the engine, not the forcer (`ScriptedText` decodes each row every step)."""

    def __init__(self, tokenizer, scripts: dict[tuple[int, ...], list[list[int]]]) -> None:
        self.scripts = scripts
        self.pad = tokenizer.pad_token_id
        self.eos = tokenizer.eos_token_id
        self.lengths = sorted({len(p) for p in scripts})
        self.reset()

    def reset(self) -> None:
        self.rounds: dict[tuple[int, ...], int] = dict.fromkeys(self.scripts, 0)
        self._width = self._batch = -1  # the next step starts a new call
        self._targets: torch.Tensor | None = None

    def _plan(self, input_ids: torch.Tensor) -> None:
        rows = []
        for ids in input_ids.tolist():
            start = next((i for i, token in enumerate(ids) if token != self.pad), len(ids))
            prompt = next(tuple(ids[start:start + n]) for n in self.lengths if tuple(ids[start:start + n])
                          in self.scripts)
            segments = self.scripts[prompt]
            k = self.rounds[prompt]
            self.rounds[prompt] += 1
            rows.append(segments[k] + [self.eos] if k == len(segments) - 1 else segments[k] if k < len(segments)
                        else [self.eos])
        width = max(len(r) for r in rows) + 1
        self._targets = torch.tensor([r + [self.eos if r[-1] == self.eos else self.pad] * (width - len(r))
                                      for r in rows], device=input_ids.device)
        self._start = input_ids.shape[1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.new_call(input_ids):
            self._plan(input_ids)
        assert self._targets is not None
        step = min(input_ids.shape[1] - self._start, self._targets.shape[1] - 1)
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, self._targets[:, step: step + 1], 0.0)
        return forced


class CallsThenFree(CallWatch, LogitsProcessor):
    """A forcer for runs on random weights that must make tool calls whatever the prompt (the memory benchmark's
    GRPO step): every row writes `segment` (token ids ending with a call's close marker) in each of its first
    `calls` generation rounds, then samples on its own. A row's round is how often `segment` already occurs in it,
    counted once per `generate` call, so rows of the same prompt (a GRPO group) and resumed rounds need no state."""

    def __init__(self, segment: list[int], calls: int) -> None:
        if not segment or calls < 0:
            raise ValueError("CallsThenFree needs a non-empty segment and calls >= 0")
        self.segment = list(segment)
        self.calls = calls
        self._start = 0
        self._rows: torch.Tensor | None = None  # the rows forced in this generate call
        self._any = False

    def _count(self, ids: list[int]) -> int:
        n, first = len(self.segment), self.segment[0]
        return sum(1 for i, token in enumerate(ids) if token == first and ids[i:i + n] == self.segment)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.new_call(input_ids):
            self._rows = torch.tensor([self._count(ids) < self.calls for ids in input_ids.tolist()],
                                      device=scores.device)
            self._any = bool(self._rows.any())
            self._start = input_ids.shape[1]
        step = input_ids.shape[1] - self._start
        assert self._rows is not None
        if step >= len(self.segment) or not self._any:
            return scores
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.segment[step]] = 0.0
        return torch.where(self._rows[:, None], forced, scores)


class StepClock(CallWatch, LogitsProcessor):
    """Only watches (the memory benchmark's per-call clock): each `generate` call's rows, decoding steps and the
    seconds from its first step to its last."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, float, float]] = []  # rows, steps, first step's time, last step's time

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        now = time.perf_counter()
        if self.new_call(input_ids):
            self.calls.append((input_ids.shape[0], 0, now, now))
        rows, steps, first, _ = self.calls[-1]
        self.calls[-1] = (rows, steps + 1, first, now)
        return scores

    def summary(self) -> list[tuple[int, int, float]]:
        """(rows, steps, seconds from the first step to the last) of each call, in order."""
        return [(rows, steps, last - first) for rows, steps, first, last in self.calls]
