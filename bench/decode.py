"""Decoding speed of one planner `generate` call on the GPU, and where its time goes (torch.profiler).

    python bench/decode.py [--shape 7b] [--batch 256] [--prompt-tokens 128] [--new-tokens 256] [--trace T.json.gz]
                           [--lora] [--step-profile N]
                           [--rows plain,compiled,ours,graphed]

Rows, side by side in one run (random Qwen2.5 shape, bf16, the local tokenizer; no weights downloaded):
transformers' plain `generate` with the dynamic and the static KV cache (compilation off), on prompts of equal
length (the issue's reference: 3.8k and 7.1k tokens/s at 7B, batch 256) and on left-padded prompts of mixed length
(what rollouts have); then our `TransformersGeneration` (log-probabilities, per-row budgets, stop strings) on the
padded prompts.
`--rows compiled,graphed` sets transformers' own answer to a launch-bound step (the static cache under
`torch.compile(mode="reduce-overhead")`) beside ours (`planner.cuda_graph`: `coder/graph_decode.py`).
Every row decodes `--new-tokens` steps for the whole batch (tokens/s = batch x steps / seconds). With `--trace`,
a torch.profiler run over a short call of ours prints the operators that take the GPU's and the CPU's time and
writes a Chrome trace; with `--step-profile N`, one decoding step's time by operator (N steps profiled, the
prefill subtracted out).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

from bench.shapes import random_model, table  # bench/shapes.py
from delegate.planner import TransformersGeneration
from delegate.planner.graph_generation import GraphGeneration
from delegate.training.tiny import build_tokenizer


def prompts(tokenizer, batch: int, width: int, padded: bool) -> list[list[int]]:
    """`batch` prompts of `width` tokens, or of widths spread from width/2 to width (left-padded to width)."""
    generator = torch.Generator().manual_seed(0)
    vocab = min(len(tokenizer), 30000)
    out = []
    for i in range(batch):
        n = width if not padded else width // 2 + (i * (width // 2)) // max(1, batch - 1)
        out.append(torch.randint(100, vocab, (n,), generator=generator).tolist())
    return out


def plain(model, tokenizer, batch: list[list[int]], new_tokens: int, cache: str, compiled: bool = False) -> int:
    """transformers' `generate`, sampling, every row decoding `new_tokens` steps; returns the steps taken.
    `compiled`: the static cache's forward under `torch.compile(mode="reduce-overhead")` (CUDA graphs), asked for
    explicitly, as transformers' own answer to a launch-bound decoding step."""
    from transformers import CompileConfig

    width = max(len(p) for p in batch)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in batch], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=model.device)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                         cache_implementation=None if cache == "dynamic" else cache,
                         pad_token_id=tokenizer.pad_token_id, disable_compile=not compiled,
                         compile_config=CompileConfig(mode="reduce-overhead") if compiled else None)
    return out.shape[1] - width


def ours(generation: TransformersGeneration, batch: list[list[int]], new_tokens: int) -> int:
    results = generation.generate(batch, [new_tokens] * len(batch), ["</request>", "</code>"])
    return max(len(r.token_ids) for r in results)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> tuple[float, int]:
    """The best of `repeats` timed calls, after one untimed call (kernels, allocator, compilation)."""
    steps = fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        steps = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, steps


def profiled(generation: TransformersGeneration, batch: list[list[int]], steps: int) -> tuple[float, Any]:
    """Wall seconds and the torch.profiler record of one call of ours, after an unprofiled warm-up call."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    ours(generation, batch, steps)
    sync()
    start = time.perf_counter()
    with profiler(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        ours(generation, batch, steps)
        sync()
    return time.perf_counter() - start, prof


def kernel_time(averages: Any) -> float:
    """Microseconds of the GPU's own events: an operator and the kernels it launched are not counted twice, and
    the profiler's "Command Buffer Full" marker is not a kernel."""
    from torch.autograd import DeviceType

    return sum(e.self_device_time_total for e in averages
               if e.device_type == DeviceType.CUDA and "Command Buffer Full" not in e.key)


def profile(generation: TransformersGeneration, batch: list[list[int]], steps: int, trace: Path) -> str:
    wall, prof = profiled(generation, batch, steps)
    averages = prof.key_averages()
    gpu = kernel_time(averages) / 1e6
    raw = trace.with_suffix("")
    prof.export_chrome_trace(str(raw))
    with raw.open("rb") as source, gzip.open(trace, "wb") as sink:
        shutil.copyfileobj(source, sink)
    raw.unlink()
    return (f"\nProfile of our generate call, {len(batch)} rows x {steps} new tokens (prefill included): wall "
            f"{wall:.2f} s under the profiler, GPU kernels {gpu:.2f} s ({100 * gpu / wall:.0f} %)\n\nBy GPU time:\n"
            + averages.table(sort_by="self_device_time_total", row_limit=20, max_name_column_width=60)
            + "\nBy CPU time:\n"
            + averages.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))


def step_profile(generation: TransformersGeneration, batch: list[list[int]], steps: int, rows: str) -> str:
    """Where one decoding step's time goes: two profiled calls, of 8 and of 8 + `steps` new tokens, and the
    difference divided by `steps` (the prefill and the call's set-up cancel out)."""
    from torch.autograd import DeviceType

    def run(new_tokens: int) -> tuple[float, float, dict[str, tuple[float, float, int]]]:
        wall, prof = profiled(generation, batch, new_tokens)
        averages = prof.key_averages()
        ops = {e.key: (e.self_device_time_total, e.self_cpu_time_total, e.count) for e in averages
               if e.device_type != DeviceType.CUDA}
        return wall, kernel_time(averages), ops

    short_wall, short_kernels, short = run(8)
    long_wall, long_kernels, long = run(8 + steps)
    wall = 1000 * (long_wall - short_wall) / steps
    gpu = (long_kernels - short_kernels) / 1000 / steps
    per_step = {}  # operator -> GPU ms, CPU ms, calls, per step
    for key, (device, cpu, count) in long.items():
        before = short.get(key, (0.0, 0.0, 0))
        per_step[key] = ((device - before[0]) / 1000 / steps, (cpu - before[1]) / 1000 / steps,
                         (count - before[2]) / steps)

    def lines(by: int, limit: int) -> list[list[str]]:
        top = sorted(per_step.items(), key=lambda kv: -kv[1][by])[:limit]
        return [[k[:58], f"{g:.2f}", f"{c:.2f}", f"{n:.0f}"] for k, (g, c, n) in top]

    return (f"\nOne decoding step of ours ({rows}, {steps} steps profiled): wall {wall:.1f} ms, GPU kernels "
            f"{gpu:.1f} ms ({100 * gpu / wall:.0f} % busy)\n\n"
            + table("By GPU time (then the operators with the most CPU time)",
                    ["operator", "GPU ms/step", "CPU ms/step", "calls/step"],
                    [*lines(0, 14), ["", "", "", ""], *lines(1, 8)]))


def peak() -> str:
    return f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if torch.cuda.is_available() else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="7b")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rows", default="plain,ours",
                        help="comma-separated: plain (generate, dynamic and static cache), compiled (generate, "
                             "static cache under torch.compile reduce-overhead), ours (TransformersGeneration), "
                             "graphed (planner.cuda_graph: coder/graph_decode.py)")
    parser.add_argument("--lora", action="store_true",
                        help="a row of ours on the model under PEFT's LoRA (the recipe's defaults); the profiles "
                             "then run on it")
    parser.add_argument("--trace", type=Path, help="profile a short call of ours; Chrome trace written here (.gz)")
    parser.add_argument("--profile-steps", type=int, default=12)
    parser.add_argument("--step-profile", type=int, default=0, metavar="N",
                        help="profile N decoding steps of ours, prefill left out (ms per step by operator)")
    args = parser.parse_args()
    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    tokenizer = build_tokenizer()
    model = random_model(args.shape, tokenizer, "cuda" if torch.cuda.is_available() else "cpu")
    equal = prompts(tokenizer, args.batch, args.prompt_tokens, padded=False)
    mixed = prompts(tokenizer, args.batch, args.prompt_tokens, padded=True)
    plan = []
    wanted = args.rows.split(",")
    if "plain" in wanted:
        plan += [(f"generate, {cache} cache, {name} prompts", lambda c=cache, b=batch: plain(
            model, tokenizer, b, args.new_tokens, c)) for cache in ("dynamic", "static")
            for name, batch in (("equal", equal), ("padded", mixed))]
    if "compiled" in wanted:
        plan.append(("generate, static cache, torch.compile reduce-overhead, padded prompts",
                     lambda: plain(model, tokenizer, mixed, args.new_tokens, "static", compiled=True)))
    if "ours" in wanted:
        for cache in ("dynamic", "static"):
            generation = TransformersGeneration(model, tokenizer, batch_size=args.batch,
                                                cache_implementation=None if cache == "dynamic" else cache)
            plan.append((f"ours, {cache} cache, padded prompts",
                         lambda g=generation: ours(g, mixed, args.new_tokens)))
    if "graphed" in wanted:  # temperature 1.0, top-p 1.0: the sampling the other rows do
        graphed = GraphGeneration(model, tokenizer, batch_size=args.batch)
        plan.append(("ours, graphed (coder/graph_decode.py), padded prompts",
                     lambda: ours(graphed, mixed, args.new_tokens)))
    if args.lora:  # the training recipe's planner: the same model under PEFT's LoRA (adapters not merged)
        from peft import LoraConfig, get_peft_model

        from delegate.training.recipe import LoraSection

        lora = LoraSection()
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=lora.target_modules, task_type="CAUSAL_LM")).eval()
        generation = TransformersGeneration(model, tokenizer, batch_size=args.batch)
        plan.append((f"ours, dynamic cache, padded prompts, LoRA r{lora.r} on {len(lora.target_modules)} "
                     "projections", lambda g=generation: ours(g, mixed, args.new_tokens)))
    rows = []
    for name, fn in plan:
        print(f"measuring: {name} ...", file=sys.stderr, flush=True)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        seconds, steps = timed(fn, args.repeats)
        rows.append([name, f"{seconds:.2f}", str(steps), f"{1000 * seconds / steps:.1f}",
                     f"{args.batch * steps / seconds:,.0f}", peak()])
    print(table(f"Decoding ({args.shape}, batch {args.batch}, prompts of {args.prompt_tokens} tokens or "
                f"{args.prompt_tokens // 2}-{args.prompt_tokens} left-padded, {args.new_tokens} new tokens, bf16, "
                f"transformers {transformers.__version__}, torch {torch.__version__}, {device})",
                ["call", "seconds", "steps", "ms/step", "tokens/s", "peak GiB"], rows), flush=True)
    if args.trace:
        generation = TransformersGeneration(model, tokenizer, batch_size=args.batch)
        print(profile(generation, mixed, args.profile_steps, args.trace), flush=True)
    if args.step_profile:
        generation = TransformersGeneration(model, tokenizer, batch_size=args.batch)
        print(step_profile(generation, mixed, args.step_profile, f"{args.batch} rows"), flush=True)


if __name__ == "__main__":
    main()
