"""What the planner's and the coder's generation share on a transformers model: the device and dtype choice,
left padding, the end-of-reply ids, and the keywords that differ between transformers releases."""

from __future__ import annotations

import inspect
from typing import Any


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def cache_argument(model: Any, cache: Any) -> dict[str, Any]:
    """`generate`'s keyword for a cache to continue from: `cache` in the transformers releases that renamed it (which
    warn on the old name), `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model takes **kwargs
    return {"cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values": cache}


def last_logits(model: Any) -> dict[str, Any]:
    """The keyword, for `generate` or a forward pass, that keeps the logits of each row's last position only: as an
    index, not the count 1 that `generate` passes by itself. The count leaves the hidden states as a strided view,
    on which PyTorch's matmul runs a frozen output layer as one matrix-vector product per row (pytorch/pytorch#186148):
    the prefill of 256 rows of a 7B read its 1 GB output layer 256 times (`python bench/gpu.py profile`; figures
    in `bench/NOTES.md`). The index copies the last positions into one matrix first."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return {}
    return {"logits_to_keep": torch.tensor([-1], device=base.device)}


def returned_cache(output: Any) -> Any:
    """The KV cache held by a model's or `generate`'s output, under either name (the keys, not `in output`: the
    renaming releases answer the old name too, with a warning)."""
    keys = set(output.keys())
    for name in ("cache", "past_key_values"):
        if name in keys:
            return output[name]
    return None


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end a reply: the tokenizer's EOS and the model's generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return ids


def padded(rows: list[list[int]], shared: int, pad: int, device: str) -> tuple[Any, Any]:
    """Input ids and attention mask: the first `shared` tokens (every row's), then each row's own tokens
    left-padded to the longest."""
    import numpy as np
    import torch

    width = shared + max(len(r) - shared for r in rows)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    ids[:, :shared] = rows[0][:shared]
    mask[:, :shared] = 1
    for i, row in enumerate(rows):
        ids[i, width - len(row) + shared:] = row[shared:]
        mask[i, width - len(row) + shared:] = 1
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
