"""The `transformers` backend: a local model, left-padded batched `generate` in micro-batches.

Every request of a call begins with the same tokens (the chat template and the system prompt): with
`share_prefix`, those are run through the model once and their KV cache is copied to every row of each
micro-batch, so that `generate` prefills only each request's own tokens. The coder is frozen, so that cache is kept
for the next call that begins with the same tokens (as the program cache keeps replies). Between the shared prefix
and a request's tokens sits the request's left padding, masked out; position ids follow the attention mask, so a
row sees the same positions as unpadded.
"""

from __future__ import annotations

import copy
from typing import Any

from delegate.coder.config import CoderConfig
from delegate.coder.core import BackendError, Conversation
from delegate.coder.hf import (
    cache_argument,
    eos_ids,
    last_logits,
    padded,
    resolve_device,
    resolve_dtype,
    returned_cache,
)

MIN_SHARED_TOKENS = 8  # a shorter common prefix is not worth the extra forward pass


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
        self.prefix: tuple[list[int], Any] | None = None  # the last shared prefix's tokens and one-row KV cache
        self.decoder = None
        if config.cuda_graph:
            from delegate.coder.graph_decode import GraphDecoder, check_model

            check_model(self.model)
            self.decoder = GraphDecoder(self.model, sorted(eos_ids(self.model, self.tokenizer)),
                                        self.tokenizer.pad_token_id)

    def complete(self, conversations: list[Conversation]) -> list[str | BackendError]:
        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        share = self.config.share_prefix and self.config.cache_implementation in (None, "dynamic")
        shared = shared_prefix(encoded) if share else 0  # of the whole call: every micro-batch reuses its cache
        shared = shared if shared >= MIN_SHARED_TOKENS else 0
        replies: list[str | BackendError] = [""] * len(texts)
        size = self.config.batch_size
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            try:
                outputs: list[str | BackendError] = list(self._generate([encoded[i] for i in chunk], shared))
            except (RuntimeError, ValueError) as exc:  # e.g. CUDA out of memory: those requests fail, not the call
                outputs = [BackendError(f"generate failed: {exc}")] * len(chunk)
            for index, output in zip(chunk, outputs, strict=True):
                replies[index] = output
        return replies

    def _generate(self, rows: list[list[int]], shared: int) -> list[str]:
        import torch

        from delegate.coder.attention import packed_attention

        ids, mask = padded(rows, shared, self.tokenizer.pad_token_id, self.device)
        with torch.inference_mode(), packed_attention(self.model):
            prefix = self._prefix(rows[0][:shared])
            if self.decoder is not None:
                generated = self.decoder(ids, mask, prefix, shared, self.config.max_new_tokens,
                                         self.config.temperature, self.config.top_p)
                return self.tokenizer.batch_decode(generated, skip_special_tokens=True)
            prefix = copy.deepcopy(prefix)  # `generate` grows the cache it is given
            resumed: dict[str, Any] = {}
            if prefix is not None:
                prefix.batch_repeat_interleave(len(rows))
                resumed = cache_argument(self.model, prefix)
            generated = self.model.generate(input_ids=ids, attention_mask=mask, **last_logits(self.model),
                                            generation_config=self.generation_config(), **resumed)
        return self.tokenizer.batch_decode(generated[:, ids.shape[1]:], skip_special_tokens=True)

    def generation_config(self) -> Any:
        """Every field that shapes the next token, set: `generate` fills what is left unset from the model's own
        `generation_config.json` (Qwen2.5-Instruct ships a repetition penalty of 1.05 and top-k 20, which would
        penalise the very digits a request asks the coder to copy). Greedy here is greedy, as in `GraphDecoder`."""
        from transformers import GenerationConfig

        sampling = self.config.temperature > 0
        # Sampling-only fields are given when sampling (greedy ignores them, and transformers warns about them).
        sampler = dict(temperature=self.config.temperature, top_p=self.config.top_p, top_k=0, min_p=0.0,
                       typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0) if sampling else {}
        return GenerationConfig(
            max_new_tokens=self.config.max_new_tokens, do_sample=sampling, **sampler, repetition_penalty=1.0,
            encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0, renormalize_logits=False,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(eos_ids(self.model, self.tokenizer)),
            cache_implementation=self.config.cache_implementation, use_cache=True)

    def _prefix(self, tokens: list[int]) -> Any:
        """The one-row KV cache of the shared tokens (None for none). The kept one serves as it is when these are
        its tokens, and a copy of it is extended when they begin with its tokens; otherwise these are kept."""
        import torch

        if not tokens:
            return None
        kept = self.prefix
        if kept is not None and kept[0] == tokens:
            return kept[1]
        if kept is not None and tokens[:len(kept[0])] == kept[0]:
            extra = torch.tensor([tokens[len(kept[0]):]], device=self.device)
            return returned_cache(self.model(input_ids=extra, use_cache=True, **last_logits(self.model),
                                             **cache_argument(self.model, copy.deepcopy(kept[1]))))
        self.prefix = (tokens, returned_cache(self.model(input_ids=torch.tensor([tokens], device=self.device),
                                                         use_cache=True, **last_logits(self.model))))
        return self.prefix[1]

    def close(self) -> None:
        self.model = self.decoder = self.prefix = None
