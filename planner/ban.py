"""Keeping a planner from writing a text (its call marker, with the tool disabled), however it is tokenized.

A real BPE spells a marker many ways: Qwen2.5 writes `<request>The` as `<`, `request`, `>The`, so banning the
marker's own tokenization (`<`, `request`, `>`) lets `>The` through. `BanText` works on text instead, as an
automaton over characters (Knuth-Morris-Pratt's): its state is how much of the marker the text so far ends with
(0 to len - 1), and two tables, built once from every token's text, say for each state and token the next state
and whether the token would complete the marker. At each step the banned tokens are one row of a table, and the
state moves by the token just chosen: tensor lookups on the rows' device, no host work and no host sync per step.
Each `generate` call's first step reads the rows' tails once to set the states.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import LogitsProcessor

# `SamplingParams.extra_args` keys that switch the ban on for one vLLM request (`planner.vllm_ban`)
BAN_ARG = "delegate_ban_text"
PROMPT_TAIL_ARG = "delegate_prompt_tail"


def _next_state(text: str, seen: str, ends: dict[str, list[int]] | None = None) -> int:
    """How much of `text` (a proper prefix) the string `seen` ends with. `ends`: for each character, the prefix
    lengths k (longest first) whose prefix ends with it: only those can match (`_ends`)."""
    if not seen:
        return 0
    candidates = (ends or _ends(text)).get(seen[-1], ())
    return next((k for k in candidates if k <= len(seen) and seen.endswith(text[:k])), 0)


def _ends(text: str) -> dict[str, list[int]]:
    ends: dict[str, list[int]] = {}
    for k in range(len(text) - 1, 0, -1):
        ends.setdefault(text[k - 1], []).append(k)
    return ends


class BanText(LogitsProcessor):
    """Forbid every continuation whose decoded text would contain `text`."""

    def __init__(self, tokenizer: Any, text: str) -> None:
        if not text:
            raise ValueError("nothing to ban")
        self.tokenizer = tokenizer
        self.text = text
        pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
        states, ends, last = len(text), _ends(text), text[-1]
        prefixes = [text[:s] for s in range(states)]
        nxt = torch.zeros(states, len(pieces), dtype=torch.long)
        ban = torch.zeros(states, len(pieces), dtype=torch.bool)
        for i, piece in enumerate(pieces):
            if not piece or (piece[-1] not in ends and last not in piece):
                continue  # it can neither complete the marker nor end inside it: state 0 from anywhere
            # A piece at least len - 1 long forgets where it started (unless it completes the marker).
            alone = _next_state(text, piece, ends) if len(piece) >= states - 1 else None
            for s, prefix in enumerate(prefixes):
                seen = prefix + piece
                if last in piece and text in seen:
                    ban[s, i] = True
                else:
                    nxt[s, i] = alone if alone is not None else _next_state(text, seen, ends)
        self.next_table, self.ban_table, self._ends = nxt, ban, ends
        self.always = ban[0].nonzero().flatten().tolist()  # tokens that hold the whole marker
        self.window = self.window_for(text)
        self._on: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._states: torch.Tensor | None = None
        self._shape = (-1, -1)  # (rows, width) of the last call: a step of the same generate is one token wider

    @staticmethod
    def window_for(text: str) -> int:
        """Tokens decoded from a row's end: enough to hold len(text) - 1 characters."""
        return max(4, len(text))

    def start_call(self) -> None:
        """A new generation call starts (the backends say so; alone, a call is told by its width)."""
        self._states = None

    def state(self, ids: list[int]) -> int:
        """How much of the marker the text of `ids` ends with."""
        return _next_state(self.text, self.tokenizer.decode(ids[-self.window:], skip_special_tokens=False),
                           self._ends)

    def banned(self, ids: list[int]) -> list[int]:
        """The tokens that would complete the marker after `ids`."""
        return self.ban_table[self.state(ids)].nonzero().flatten().tolist()

    def _tables(self, device: torch.device, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The tables on `device`, `width` columns wide: a model's output layer may have more rows than the
        tokenizer has tokens (Qwen2.5: 151,936 and 151,665); those tokens have no text, so they lead to state 0."""
        key = (device, width)
        if key not in self._on:
            extra = max(0, width - self.next_table.shape[1])
            nxt = torch.nn.functional.pad(self.next_table, (0, extra))[:, :width]
            ban = torch.nn.functional.pad(self.ban_table, (0, extra))[:, :width]
            self._on[key] = (nxt.to(device), ban.to(device))
        return self._on[key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        nxt, ban = self._tables(scores.device, scores.shape[-1])
        rows, width = input_ids.shape
        if self._states is None or self._shape != (rows, width - 1):  # a new call: read the rows' tails once
            states = torch.tensor([self.state(row) for row in input_ids.tolist()], device=scores.device)
        else:  # the next step of the same call: move by the token just chosen
            states = nxt[self._states, input_ids[:, -1].to(scores.device)]
        self._states, self._shape = states, (rows, width)
        return scores.masked_fill_(ban[states], float("-inf"))

    def for_request(self, prompt_tail: list[int]) -> Callable[[list[int], torch.Tensor], torch.Tensor]:
        """The ban as one request's logits processor, `(output_ids, logits_row) -> logits_row`: the shape vLLM's
        per-request processors take (`planner.vllm_ban`). vLLM hands it only the generated ids, so the prompt's
        last tokens come along: a marker may begin in the prompt and end in the first sampled token."""
        tail = list(prompt_tail[-self.window:])

        def ban_row(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            logits[self.banned(tail + list(output_ids))] = float("-inf")
            return logits

        return ban_row
