"""The `transformers` backend: a local model, left-padded batched `generate` in micro-batches."""

from __future__ import annotations

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

    def complete(self, conversations: list[Conversation]) -> list[str | BackendError]:
        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        replies: list[str | BackendError] = [""] * len(texts)
        size = self.config.batch_size
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            try:
                outputs: list[str | BackendError] = list(self._generate([texts[i] for i in chunk]))
            except (RuntimeError, ValueError) as exc:  # e.g. CUDA out of memory: those requests fail, not the call
                outputs = [BackendError(f"generate failed: {exc}")] * len(chunk)
            for index, output in zip(chunk, outputs, strict=True):
                replies[index] = output
        return replies

    def _generate(self, texts: list[str]) -> list[str]:
        import torch

        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampling: dict[str, Any] = {"do_sample": False}
        if self.config.temperature > 0:
            sampling = {"do_sample": True, "temperature": self.config.temperature, "top_p": self.config.top_p}
        with torch.inference_mode():
            generated = self.model.generate(**batch, max_new_tokens=self.config.max_new_tokens,
                                            pad_token_id=self.tokenizer.pad_token_id,
                                            cache_implementation=self.config.cache_implementation, **sampling)
        new_tokens = generated[:, batch["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    def close(self) -> None:
        self.model = None
