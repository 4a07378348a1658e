"""Attention for the prefill of left-padded rows in a grouped-query model (Qwen2.5-7B: 7 query heads share each
key/value head), used by the planner's and the coder's generation.

Given a mask, transformers' SDPA attention copies each key/value head once for every query head that reads it
before calling `scaled_dot_product_attention` (PyTorch's fused kernels take grouped heads only without a mask);
for a single query token a row it packs the query heads onto their key/value head instead. `packed_sdpa` packs
several query tokens as well, as a prefill has them: a group's query heads become one longer query sequence of
their key/value head, and the mask (the same for every head) is tiled to match. On the H200 the copies cost more
than the attention itself, and packing removed them (`python bench/kernels.py`; figures in `bench/NOTES.md`).
Kept because it wins measured: 3.0x SDPA's own `enable_gqa` under the same mask
(bench/results/gpu-library-paths.txt). Only where no gradient is recorded: a training step would keep the tiled mask
for its backward pass, so it runs transformers' own attention unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_packed_gqa"


def packed_sdpa(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: `query` (rows, heads, tokens, dim), `key`/`value` (rows, key/value
    heads, positions, dim), the mask (rows or 1, 1, tokens or 1, positions); returns (rows, tokens, heads, dim)."""
    groups = getattr(module, "num_key_value_groups", 1)
    rows, heads, tokens, dim = query.shape
    plain = (groups == 1 or tokens == 1 or attention_mask is None or attention_mask.dim() != 4
             or attention_mask.shape[1] != 1 or attention_mask.shape[2] not in (1, tokens) or torch.is_grad_enabled()
             or any(kwargs.get(name) for name in ("position_bias", "softcap", "output_attentions")))
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    packed = query.reshape(rows, heads // groups, groups * tokens, dim)  # head h reads key/value head h // groups
    mask = attention_mask.expand(-1, -1, tokens, -1).repeat(1, 1, groups, 1)
    output = torch.nn.functional.scaled_dot_product_attention(
        packed, key, value, attn_mask=mask, dropout_p=kwargs.get("dropout", 0.0), scale=kwargs.get("scaling"))
    return output.reshape(rows, heads, tokens, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, packed_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA takes


@contextmanager
def packed_attention(model: Any) -> Iterator[None]:
    """For the length of the block, a model on transformers' SDPA attention runs `packed_sdpa`, which is the same
    attention (other models are left as they are). Scoped to our generation calls, so that the model a user or a
    trainer holds stays as loaded outside them."""
    config = model.config
    if config._attn_implementation != "sdpa":
        yield
        return
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
