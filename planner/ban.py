"""Keeping a planner from writing a text (its call marker, with the tool disabled), however it is tokenized.

A real BPE spells a marker many ways: Qwen2.5 writes `<request>The` as `<`, `request`, `>The`, so banning the
marker's own tokenization (`<`, `request`, `>`) lets `>The` through. `BanText` works on text instead: at every step
it looks at the end of each row's text and forbids every token whose text would complete the marker there, whatever
the token boundaries. It precomputes, for each proper prefix of the marker, the tokens that begin with the rest of
it, so a step costs one short decode per row.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor


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
        self.window = max(4, len(text))  # tokens decoded from each row's end: enough to hold len(text) - 1 chars

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
