"""GPU benchmark: where the GPU time of one graphed coder call on a round's requests goes; one table.

    python bench/gpu_profile.py [--shape 7b] [--rollouts 256] [--coder-tokens 32]

torch.profiler (the kernels replayed inside the captured graph are reported one by one), kernels grouped by kind,
against the time the same matrix products take alone (the ceiling).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

from bench.shapes import common_arguments, random_model, table, unpacked_attention  # bench/shapes.py

KINDS = [("matrix products", ("gemm", "cutlass", "sm90_", "sm80_", "cublas", "nvjet")),
         ("attention", ("fmha", "attention", "flash", "efficient")),
         ("copies and casts", ("copy", "cat", "index", "fill", "elementwise_kernel_with_index")),
         ("reductions (norms, softmax, argmax)", ("reduce", "softmax", "norm", "argmax"))]


def kind(kernel: str) -> str:
    name = kernel.lower()
    return next((k for k, marks in KINDS if any(m in name for m in marks)), "other elementwise")


def profile(args: argparse.Namespace) -> str:
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    from delegate.coder import CoderConfig, build_coder
    from delegate.coder.transformers_backend import shared_prefix
    from delegate.training.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    model = random_model(args.shape, tokenizer, args.device)
    coder = build_coder(CoderConfig(model=f"random {args.shape}", device=args.device, max_new_tokens=args.coder_tokens,
                                    cache_size=0, batch_size=args.rollouts, cuda_graph=True),
                        model=model, tokenizer=tokenizer)
    requests = [f"{1000 + i} times {2000 + i}" for i in range(args.rollouts)]
    encoded = [tokenizer.apply_chat_template([{"role": "system", "content": coder.system_prompt},
                                              {"role": "user", "content": r}], add_generation_prompt=True,
                                             return_dict=True)["input_ids"] for r in requests]
    own = max(len(e) for e in encoded) - shared_prefix(encoded)

    def call() -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        coder.write_programs(requests)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    call()  # captures the graph and keeps the shared prefix
    wall = min(call() for _ in range(3))
    with unpacked_attention():
        unpacked = min(call() for _ in range(3))
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])]
    with profiler(activities=activities, record_shapes=True) as prof:
        call()
    launchers: dict[str, Counter[str]] = {}  # kernel -> the operators (with their input shapes) that launched it
    for event in prof.events():
        for launched in event.kernels:
            launchers.setdefault(launched.name, Counter())[f"{event.name} {event.input_shapes}"] += 1
    kernels: dict[str, tuple[float, int]] = {}
    for event in prof.key_averages():
        if event.device_type == DeviceType.CUDA and "Command Buffer Full" not in event.key:
            seconds, count = kernels.get(event.key, (0.0, 0))
            kernels[event.key] = (seconds + event.self_device_time_total / 1e6, count + event.count)
    total = sum(s for s, _ in kernels.values()) or float("nan")
    by_kind: dict[str, float] = {}
    for name, (seconds, _) in kernels.items():
        by_kind[kind(name)] = by_kind.get(kind(name), 0.0) + seconds
    rows = [[k, f"{s * 1e3:.1f}", f"{100 * s / total:.0f}"] for k, s in sorted(by_kind.items(), key=lambda x: -x[1])]
    top = sorted(kernels.items(), key=lambda x: -x[1][0])[:20]
    text = table(f"Coder call ({args.shape}, {args.rollouts} requests, {args.coder_tokens} new tokens, CUDA graph): "
                 f"{wall:.3f} s wall (best of 3; {unpacked:.3f} s with the prefill's attention unpacked), GPU kernels "
                 f"{total:.3f} s", ["kernels", "ms", "%"], rows)
    text += table("The 20 kernels of most time (launched by: the operator and its input shapes; none for the "
                  "graph's replays)", ["kernel", "calls", "ms", "us per call", "launched by"],
                  [[name[:90], str(count), f"{s * 1e3:.1f}", f"{1e6 * s / count:.1f}",
                    launchers[name].most_common(1)[0][0][:120] if name in launchers else ""]
                   for name, (s, count) in top])
    if not args.device.startswith("cuda"):
        return text
    from bench.attention_kernels import timed  # bench/attention_kernels.py: CUDA events around the repeats

    config = model.config
    hidden, inner = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * hidden // config.num_attention_heads
    shapes = {"q and o projections": (hidden, hidden), "k, v projections": (hidden, kv),
              "gate, up projections": (hidden, inner), "down projection": (inner, hidden),
              "lm head": (hidden, config.vocab_size)}
    ceiling = []
    for tokens in (args.rollouts, args.rollouts * own):
        for name, (k, n) in shapes.items():
            if name == "lm head" and tokens != args.rollouts:
                continue  # the prefill keeps one position's logits a row
            a = torch.randn(tokens, k, device=args.device, dtype=model.dtype)
            b = torch.randn(k, n, device=args.device, dtype=model.dtype)
            us = timed(lambda a=a, b=b: a @ b)
            ceiling.append([f"{tokens} x {k} x {n} ({name})", f"{us:.0f}", f"{2 * tokens * k * n / us / 1e6:.0f}"])
    return text + table("The same matrix products alone (the ceiling: a decoding step at the first row count, the "
                        f"prefill of {own} tokens a row, the requests' own, at the second)",
                        ["product", "us", "TFLOP/s"], ceiling)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--rollouts", type=int, default=256)
    parser.add_argument("--coder-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    args.shape = args.shape or "7b"
    print(profile(args), flush=True)


if __name__ == "__main__":
    main()
