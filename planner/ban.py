"""Keeping a planner from writing a text (its call marker, with the tool disabled), however it is tokenized.

A real BPE spells a marker many ways: Qwen2.5 writes `<request>The` as `<`, `request`, `>The`, so banning the
marker's own tokenization (`<`, `request`, `>`) lets `>The` through. `BanText` works on text instead: at every step
it looks at the end of each row's text and forbids every token whose text would complete the marker there, whatever
the token boundaries. It precomputes, for each proper prefix of the marker, the tokens that begin with the rest of
it, so a step costs one short decode per row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import LogitsProcessor

# `SamplingParams.extra_args` keys that switch the ban on for one vLLM request (`planner.vllm_ban`)
BAN_ARG = "delegate_ban_text"
PROMPT_TAIL_ARG = "delegate_prompt_tail"


class BanText(LogitsProcessor):
    """Forbid every continuation whose decoded text would contain `text`."""

    def __init__(self, tokenizer: Any, text: str, prompt_length: int | None = None) -> None:
        if not text:
            raise ValueError("nothing to ban")
        self.tokenizer = tokenizer
        self.text = text
        pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
        self.always = [i for i, piece in enumerate(pieces) if text in piece]
        # after[k]: tokens that finish the marker when the text so far ends with its first k characters
        self.after = {k: [i for i, piece in enumerate(pieces) if piece.startswith(text[k:])]
                      for k in range(1, len(text))}
        self.window = self.window_for(text)

    @staticmethod
    def window_for(text: str) -> int:
        """Tokens decoded from a row's end: enough to hold len(text) - 1 characters."""
        return max(4, len(text))

    def tail(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids[-self.window:], skip_special_tokens=False)

    def banned(self, ids: list[int]) -> list[int]:
        tail = self.tail(ids)
        found = list(self.always)
        for k in range(1, len(self.text)):
            if tail.endswith(self.text[:k]):
                found += self.after[k]
        return found

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, ids in enumerate(input_ids.tolist()):
            scores[row, self.banned(ids)] = float("-inf")
        return scores

    def for_request(self, prompt_tail: list[int]) -> Callable[[list[int], torch.Tensor], torch.Tensor]:
        """The ban as one request's logits processor, `(output_ids, logits_row) -> logits_row`: the shape vLLM's
        per-request processors take (`planner.vllm_ban`). vLLM hands it only the generated ids, so the prompt's
        last tokens come along: a marker may begin in the prompt and end in the first sampled token."""
        tail = list(prompt_tail[-self.window:])

        def ban_row(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            logits[self.banned(tail + list(output_ids))] = float("-inf")
            return logits

        return ban_row
