"""The kernels a 7B decoding step and a short prefill choose between, timed alone on the GPU: the output layer on
the last position's hidden states (a strided view, as `logits_to_keep=1` leaves it, or a contiguous copy), and
scaled dot-product attention under a per-row mask through each of PyTorch's backends, with the query heads packed
onto the key/value heads (`coder/attention.py`), the key/value heads repeated (transformers' SDPA path under a mask)
or SDPA's own grouping (`enable_gqa=True`). `bench/gpu.py profile` shows where these sit in a call.

    python -m bench.attention_kernels [--rows 256] [--length 192] [--own 19]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

HIDDEN, HEADS, KV_HEADS, DIM, VOCAB = 3584, 28, 4, 128, 152064  # Qwen2.5-7B
BACKENDS = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH}


def timed(fn: Callable[[], object], repeats: int = 50) -> float:
    """Mean microseconds per call between CUDA events, after warm-up calls."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return 1e3 * start.elapsed_time(end) / repeats


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
              backend: SDPBackend | None, gqa: bool = False) -> Callable[[], object]:
    """SDPA on one backend (None: PyTorch's choice); `gqa`: SDPA's own grouping of query heads (`enable_gqa`)."""
    def run() -> object:
        if backend is None:
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=gqa)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=gqa)
    return run


def masks(rows: int, queries: int, length: int, device: str) -> torch.Tensor:
    """An additive mask with each row's first positions blocked (left padding), as the coder's."""
    blocked = torch.arange(length, device=device)[None, :] < torch.randint(0, 16, (rows, 1), device=device)
    return torch.zeros(rows, 1, queries, length, dtype=torch.bfloat16, device=device).masked_fill_(
        blocked[:, None, None, :], torch.finfo(torch.bfloat16).min)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--length", type=int, default=192, help="cached positions (the coder's rounded length)")
    parser.add_argument("--own", type=int, default=19, help="query tokens a row in the prefill")
    args = parser.parse_args()
    device, bf16, rows, length, group = "cuda", torch.bfloat16, args.rows, args.length, HEADS // KV_HEADS
    out = []

    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False, device=device, dtype=bf16)
    for width in (args.own, 160):
        hidden = torch.randn(rows, width, HIDDEN, device=device, dtype=bf16)
        last = hidden[:, -1:, :]
        out.append((f"output layer, last of {width} positions: strided view", timed(lambda last=last: head(last))))
        out.append((f"output layer, last of {width} positions: contiguous copy",
                    timed(lambda last=last: head(last.contiguous()))))

    key = torch.randn(rows, KV_HEADS, length, DIM, device=device, dtype=bf16)
    value = torch.randn_like(key)
    repeated_key = key[:, :, None].expand(rows, KV_HEADS, group, length, DIM).reshape(rows, HEADS, length, DIM)
    repeated_value = value[:, :, None].expand(rows, KV_HEADS, group, length, DIM).reshape(rows, HEADS, length, DIM)
    out.append(("repeat the key/value heads (one tensor)",
                timed(lambda: key[:, :, None].expand(rows, KV_HEADS, group, length, DIM).reshape(rows, HEADS, length,
                                                                                                   DIM))))
    step_mask = masks(rows, 1, length, device)
    packed = torch.randn(rows, KV_HEADS, group, DIM, device=device, dtype=bf16)  # one query token, heads packed
    for name, backend in BACKENDS.items():
        try:
            out.append((f"decoding step attention, query heads packed, {name}",
                        timed(attention(packed, key, value, step_mask, backend))))
        except RuntimeError as error:
            out.append((f"decoding step attention, query heads packed, {name}: {str(error)[:60]}", float("nan")))

    prefill_mask = masks(rows, args.own, length, device)
    query = torch.randn(rows, HEADS, args.own, DIM, device=device, dtype=bf16)
    packed_query = query.view(rows, KV_HEADS, group * args.own, DIM)
    packed_mask = prefill_mask.repeat(1, 1, group, 1)
    allowed = prefill_mask == 0  # the same mask as booleans, as transformers' masks for SDPA are
    for name, backend in BACKENDS.items():
        for label, q, k, v, m in (("key/value heads repeated", query, repeated_key, repeated_value, prefill_mask),
                                  ("query heads packed", packed_query, key, value, packed_mask),
                                  ("key/value heads repeated, boolean mask", query, repeated_key, repeated_value,
                                   allowed),
                                  ("query heads packed, boolean mask", packed_query, key, value,
                                   allowed.repeat(1, 1, group, 1)),
                                  ("SDPA's enable_gqa", query, key, value, prefill_mask),
                                  ("SDPA's enable_gqa, boolean mask", query, key, value, allowed)):
            try:
                out.append((f"prefill attention ({args.own} tokens), {label}, {name}",
                            timed(attention(q, k, v, m, backend, gqa="enable_gqa" in label))))
            except RuntimeError as error:
                out.append((f"prefill attention, {label}, {name}: {str(error)[:60]}", float("nan")))

    width = max(len(name) for name, _ in out)
    print(f"\nKernels alone ({rows} rows, {length} cached positions, 7B shapes, bf16, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name()})\n")
    print(f"{'what':<{width}}  {'us':>8}\n" + "-" * (width + 10))
    for name, us in out:
        print(f"{name:<{width}}  {us:8.1f}")


if __name__ == "__main__":
    main()
