"""The `transformers` backend: a local model, left-padded batched `generate` in micro-batches.

Every request of a micro-batch begins with the same tokens (the chat template and the system prompt): with
`share_prefix`, those are run through the model once and their KV cache is copied to every row, so that `generate`
prefills only each request's own tokens. Between the shared prefix and a request's tokens sits the request's left
padding, masked out; position ids follow the attention mask, so a row sees the same positions as unpadded.
"""

from __future__ import annotations

import inspect
from typing import Any

from coder.config import CoderConfig
from coder.core import BackendError, Conversation


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


MIN_SHARED_TOKENS = 8  # a shorter common prefix is not worth the extra forward pass


def cache_argument(model: Any, cache: Any) -> dict[str, Any]:
    """`generate`'s keyword for a cache to continue from: `cache` in the transformers releases that renamed it (which
    warn on the old name), `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model takes **kwargs
    return {"cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values": cache}


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


def shared_prefix(rows: list[list[int]]) -> int:
    """Tokens that every row begins with, leaving each row at least one token of its own."""
    if not rows:
        return 0
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n


class TransformersBackend:
    """Greedy (or sampled) generation with a frozen local model; requests sorted by length to pad less."""

    def __init__(self, config: CoderConfig, model: Any = None, tokenizer: Any = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.device = resolve_device(config.device)
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(config.model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(config.model,
                                                         dtype=resolve_dtype(config.dtype, self.device))
            model.to(self.device)
        self.model = model.eval().requires_grad_(False)
        if config.cuda_graph:
            from coder.graph_decode import check_model

            check_model(self.model)

    def complete(self, conversations: list[Conversation]) -> list[str | BackendError]:
        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        replies: list[str | BackendError] = [""] * len(texts)
        size = self.config.batch_size
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            try:
                outputs: list[str | BackendError] = list(self._generate([encoded[i] for i in chunk]))
            except (RuntimeError, ValueError) as exc:  # e.g. CUDA out of memory: those requests fail, not the call
                outputs = [BackendError(f"generate failed: {exc}")] * len(chunk)
            for index, output in zip(chunk, outputs, strict=True):
                replies[index] = output
        return replies

    def _generate(self, rows: list[list[int]]) -> list[str]:
        import torch

        share = self.config.share_prefix and self.config.cache_implementation in (None, "dynamic")
        shared = shared_prefix(rows) if share else 0
        shared = shared if shared >= MIN_SHARED_TOKENS else 0
        pad = self.tokenizer.pad_token_id
        tails = [r[shared:] for r in rows]
        width = max(len(t) for t in tails)
        ids = torch.tensor([rows[0][:shared] + [pad] * (width - len(t)) + t for t in tails], device=self.device)
        mask = torch.tensor([[1] * shared + [0] * (width - len(t)) + [1] * len(t) for t in tails], device=self.device)
        with torch.inference_mode():
            prefix = returned_cache(self.model(input_ids=ids[:1, :shared], use_cache=True)) if shared else None
            if self.config.cuda_graph:
                from coder.graph_decode import decode

                generated = decode(self.model, ids, mask, prefix, shared, self.config.max_new_tokens,
                                   sorted(eos_ids(self.model, self.tokenizer)), pad, self.config.temperature,
                                   self.config.top_p)
                return self.tokenizer.batch_decode(generated, skip_special_tokens=True)
            sampling: dict[str, Any] = {"do_sample": False}
            if self.config.temperature > 0:
                sampling = {"do_sample": True, "temperature": self.config.temperature, "top_p": self.config.top_p}
            resumed: dict[str, Any] = {}
            if prefix is not None:
                prefix.batch_repeat_interleave(len(rows))
                resumed = cache_argument(self.model, prefix)
            generated = self.model.generate(input_ids=ids, attention_mask=mask,
                                            max_new_tokens=self.config.max_new_tokens,
                                            pad_token_id=pad, cache_implementation=self.config.cache_implementation,
                                            **sampling, **resumed)
        return self.tokenizer.batch_decode(generated[:, ids.shape[1]:], skip_special_tokens=True)

    def close(self) -> None:
        self.model = None
