"""Random Qwen2.5 shapes for the GPU benchmarks (speed and memory do not depend on the weights' values) with Qwen's
vocabulary size, built on the device in bf16 with the local tokenizer (no weights downloaded); the table every
benchmark prints; the arguments every GPU benchmark takes."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

QWEN = {  # Qwen2.5 configurations (vocabulary 151,936 rows in 0.5B/1.5B, 152,064 in 7B); "tiny" for a CPU smoke run
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
SYSTEM = "Solve the problem. Delegate computation."


def random_model(shape: str, tokenizer, device: str = "cuda"):
    """A random Qwen2.5-shaped model, initialised directly on `device` in bf16."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**{**QWEN[shape], "vocab_size": max(QWEN[shape]["vocab_size"], len(tokenizer))},
                         max_position_embeddings=32768, rope_theta=1e6,
                         bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # no float32 copy of 7B parameters on the way
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def saved_model(shape: str, where: Path, device: str = "cuda") -> Path:
    """The random model and the local tokenizer written to `where` (for code that loads from a path)."""
    from delegate.training.tiny import build_tokenizer

    if (where / "config.json").exists():
        return where
    tokenizer = build_tokenizer()
    model = random_model(shape, tokenizer, device)
    model.save_pretrained(where)
    tokenizer.save_pretrained(where)
    del model
    return where


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths,
                                                                                           strict=True)))
    out = [f"\n{title}\n", line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in rows]
    return "\n".join(out)


@contextmanager
def unpacked_attention() -> Iterator[None]:
    """`coder.attention`'s name served by transformers' own SDPA attention for the block (an ablation)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from delegate.coder.attention import NAME, packed_sdpa

    AttentionInterface.register(NAME, sdpa_attention_forward)
    try:
        yield
    finally:
        AttentionInterface.register(NAME, packed_sdpa)


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--isolation", choices=["full", "none"], default="full",
                        help="the sandbox's isolation; none where bubblewrap is missing (the GPU machine)")
    parser.add_argument("--shape", default=None, help="rollout: 7b; step: 1.5b")
    parser.add_argument("--work", default=tempfile.gettempdir())
    parser.add_argument("--device", default="cuda",
                        help="rollout, profile, memory: cpu for a smoke run with --shape tiny")
