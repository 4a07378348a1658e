"""GPU benchmark (the lent H200): rollouts with tool calls, GRPO step time, and the 7B + 7B memory peak, each
printed as a table with its ratios measured side by side in the same run.

    python bench/gpu.py rollout [--shape 7b] [--rollouts 256] [--compare-rollouts 64] [--sandbox-servers 4 8]
                                [--sandbox-ready 256] [--coder-cache graph] [--repeats 3] [--breakdown]
                                [--trl-loop] [--paired-only] [--attention-ablation]
    python bench/gpu.py step    [--shape 1.5b] [--batch 64] [--group 8] [--completion-tokens 256]
    python bench/gpu.py memory  [--completion-tokens 2048] [--tool-calls 2] [--coder-graph] [--no-reuse]
    python bench/gpu.py profile [--shape 7b] [--rollouts 256] [--coder-tokens 32]

Models are random Qwen2.5 shapes (speed and memory do not depend on the weights' values) with Qwen's vocabulary
size, built on the GPU in bf16; the tokenizer is the local one. No weights are downloaded.

- `rollout`: our engine with 2 tool calls per rollout (forced by `PlannedScript`, one tensor op per step; a real
  program per call), with the sandbox on 1 and `--sandbox-servers` fork servers (the most of them also with
  `--sandbox-ready` job processes forked ahead) and the calls in 1 or `--tool-chunks` chunks; with
  `--coder-cache`, the coder on the static cache or its CUDA-graph decoder (`coder.cuda_graph`); the coder
  prefilling its whole prompt (`share_prefix` off); no KV reuse; the same planner tokens with no tool calls (the
  tool overhead), and the tool calls made one rollout at a time, the coder at batch 1 and the sandbox one job at a
  time: the pattern of TRL's built-in `tools=` loop, which calls each rollout's tools in turn (DESIGN.md).
  This emulates that loop inside our engine; `--trl-loop` adds a row through TRL's own loop (`GRPOTrainer`'s
  `tools=`, `bench/trl_loop.py`) with the same model, the coder and the sandbox wrapped as one tool function.
- `step`: seconds per GRPO step through `training/grpo.py` (our rollout function) against TRL's vanilla GRPO on
  the same model, prompts and completion lengths, no tool calls (`bench/train_step.py`).
- `memory`: the 7B request recipe (`training/recipes/qwen2.5-7b-request.yaml`: LoRA, gradient checkpointing,
  group 8) with a 7B planner and a 7B coder in bf16 on one card, one GRPO step, every completion forced to make
  `--tool-calls` requests (`CallsThenFree`) so the coder generates in the step; the peak allocated memory, of the
  rollouts alone and of the whole step.
- `profile`: where the GPU time of one graphed coder call on a round's requests goes (torch.profiler; the kernels
  replayed inside the captured graph are reported one by one), kernels grouped by kind, against the time the same
  matrix products take alone (the ceiling).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    from training.tiny import build_tokenizer

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


# --- rollout ----------------------------------------------------------------------------------------------------

def rollout(args: argparse.Namespace) -> str:
    import torch
    from rollout import OneAtATime  # bench/rollout.py: tools one rollout after another (TRL's tools= pattern)
    from trl_loop import trl_tools_rollouts  # bench/trl_loop.py

    from coder import CoderConfig, build_coder
    from executor import Sandbox, SandboxConfig
    from planner import EngineLimits, RolloutEngine, TransformersGeneration, build_protocol
    from planner.engine import PHASES
    from planner.graph_generation import GraphGeneration
    from tests.scripted import PlannedScript
    from training.tiny import build_tokenizer

    class Programs:
        """The sandbox running a real program for every call: a random coder writes no code block, and an empty
        program would be refused without a job."""

        def __init__(self, servers: int, ready: int = 0) -> None:
            pool = {"ready": ready, "max_processes": max(512, 4 * ready)} if ready else {}
            self.box = Sandbox(SandboxConfig(timeout_s=10.0, servers=servers, isolation=args.isolation,
                                            **pool)).start()  # before CUDA work

        def run_many(self, codes: list[str]) -> list:
            return self.start_many(codes).results()

        def start_many(self, codes: list[str]):
            return self.box.start_many([code or f"print({i} * {i + 1} + sum(range(99)))"
                                        for i, code in enumerate(codes)])

    boxes = {(servers, 0): Programs(servers) for servers in (1, *args.sandbox_servers)}
    most = max(servers for servers, _ in boxes)
    if args.sandbox_ready:
        boxes[(most, args.sandbox_ready)] = Programs(most, args.sandbox_ready)
    sandbox = boxes[(1, 0)]
    tokenizer = build_tokenizer()
    model = random_model(args.shape, tokenizer, args.device)
    coder = build_coder(CoderConfig(model=f"random {args.shape}", device=args.device, max_new_tokens=args.coder_tokens,
                                    cache_size=0, batch_size=args.rollouts), model=model, tokenizer=tokenizer)
    protocol = build_protocol("request", None, 2000, tokenizer)
    probe = RolloutEngine(protocol, None, tokenizer, sandbox, coder)

    def words(i: int, n: int) -> list[int]:
        """About n tokens of planner text for rollout i (no markers in it)."""
        text = " ".join(f"step {i} then {k} more," for k in range(n))
        return tokenizer.encode(text, add_special_tokens=False)[:n]

    def scripts(count: int, tools: bool) -> tuple[list[str], list[list[int]], dict]:
        questions = [f"Question {i}: a farm holds {10**9 + 7 * i} eggs and sells {3 * i + 1} boxes of "
                     f"{12 + i % 5}. " + "How many eggs are left? " * 8 for i in range(count)]
        prompts = [probe.prompt_ids(SYSTEM, q) for q in questions]
        planned = {}
        for i, p in enumerate(prompts):
            ask = [tokenizer.encode(f"<request>{1000 + i} times {2000 + i + k}</request>", add_special_tokens=False)
                   for k in range(2)]
            think = [words(i, args.segment_tokens - len(a)) for a in ask]
            end = tokenizer.encode(f"\\boxed{{{(1000 + i) * (2000 + i)}}}", add_special_tokens=False)
            last = words(i + 7, args.segment_tokens - len(end)) + end
            segments = [think[0] + ask[0], think[1] + ask[1], last]
            if not tools:  # the same planner tokens in one round, markers spelt so that nothing stops
                flat = [t for s in segments for t in s]
                plain = tokenizer.encode(tokenizer.decode(flat).replace("<request>", "[ask]")
                                         .replace("</request>", "[/ask]"), add_special_tokens=False)
                segments = [plain[: len(flat) - len(end)] + end]
            planned[tuple(p)] = segments
        return questions, prompts, planned

    graphed: dict[int, GraphGeneration] = {}  # the graphed planner per batch size, its captured steps kept

    def run(count: int, tools: bool, coder_like, sandbox_like, reuse: bool = True, chunks: int = 1,
            packed: bool = True, graph: bool = False) -> tuple[float, int, int, dict[str, float]]:
        """One timed run of `count` rollouts: seconds, planner tokens, tool calls, seconds per engine phase;
        `packed` False: the prefills' attention is transformers' own (`coder.attention`'s ablation); `graph`: the
        planner decodes through the CUDA-graph decoder (`planner.cuda_graph`)."""
        if tools == "trl":  # TRL's own tools= loop (bench/trl_loop.py)
            seconds, tokens, calls = trl_tools_rollouts(model, tokenizer, coder_like, sandbox_like, count,
                                                        args.segment_tokens, words, PlannedScript, sync)
            return seconds, tokens, calls, dict.fromkeys(PHASES, float("nan"))
        questions, prompts, planned = scripts(count, tools)
        forcer = PlannedScript(tokenizer, planned)
        generator: Any = TransformersGeneration(model, tokenizer, temperature=1.0, batch_size=count,
                                                logits_processors=[forcer], reuse_cache=reuse)
        if graph:
            if count not in graphed:
                graphed[count] = GraphGeneration(model, tokenizer, temperature=1.0, batch_size=count)
            generator = graphed[count]
            generator.logits_processors = [forcer]
        engine = RolloutEngine(protocol, generator, tokenizer, sandbox_like, coder_like,
                               EngineLimits(4 * args.segment_tokens + 64, 4, 500), tool_chunks=chunks)
        sync()
        start = time.perf_counter()
        with nullcontext() if packed else unpacked_attention():
            trajectories = engine.run(questions, prompts)
        sync()
        seconds = time.perf_counter() - start
        tokens = sum(sum(t.env_mask) for t in trajectories)
        calls = sum(len(t.tool_calls) for t in trajectories)
        return seconds, tokens, calls, dict(engine.seconds)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    print("warming up (kernels, allocator, sandbox) ...", file=sys.stderr, flush=True)
    run(16, True, coder, sandbox)
    rows, measured = [], {}
    unshared = build_coder(CoderConfig(model=f"random {args.shape}", device=args.device,
                                       max_new_tokens=args.coder_tokens, cache_size=0, batch_size=args.rollouts,
                                       share_prefix=False), model=model, tokenizer=tokenizer)
    def variant(servers: int, ready: int, chunks: int) -> str:
        return ", ".join(["engine, batched tool calls", *([f"in {chunks} chunks"] if chunks > 1 else []),
                          f"sandbox {servers} server{'s' if servers > 1 else ''}",
                          *([f"{ready} ready"] if ready else [])])

    plan = [*((variant(servers, ready, chunks), args.rollouts, True, coder, box, True, chunks, True)
              for (servers, ready), box in boxes.items() for chunks in (1, *args.tool_chunks)),
            *([("engine, coder prefills its whole prompt", args.rollouts, True, unshared, sandbox, True, 1, True),
               ("engine, batched tool calls, no KV reuse", args.rollouts, True, coder, sandbox, False, 1, True)]
              if args.ablations else []),
            ("same tokens, no tool calls", args.rollouts, False, coder, sandbox, True, 1, True)]
    if args.coder_cache:
        own = {"cuda_graph": True} if args.coder_cache == "graph" else {"cache_implementation": args.coder_cache}
        fast = build_coder(CoderConfig(model=f"random {args.shape}", device=args.device,
                                       max_new_tokens=args.coder_tokens, cache_size=0, batch_size=args.rollouts,
                                       **own), model=model, tokenizer=tokenizer)
        key = (most, args.sandbox_ready)
        print(f"warming up the coder ({args.coder_cache}) ...", file=sys.stderr, flush=True)
        run(args.rollouts, True, fast, boxes[key])
        after = len(boxes) * (1 + len(args.tool_chunks))  # the sandbox rows'
        for ready in sorted({0, args.sandbox_ready}):  # with and without the ready pool's refilling beside it
            plan.insert(after + (ready > 0), (f"{variant(most, ready, 1)}, coder {args.coder_cache}",
                                              args.rollouts, True, fast, boxes[(most, ready)], True, 1, True))
    # The fastest setting's tools row: the most servers, the ready pool and the coder option, calls unchunked.
    tools_row = plan[max(i for i, (name, *_) in enumerate(plan) if name.startswith("engine, batched tool calls")
                         and "chunks" not in name and "KV" not in name and "whole" not in name)]
    if args.paired_only:
        plan = [tools_row, next(row for row in plan if row[0] == "same tokens, no tool calls")]
    if args.compare_rollouts:
        plan += [("engine, batched tool calls", args.compare_rollouts, True, coder, sandbox, True, 1, True),
                 ("tools one rollout at a time (TRL tools= pattern)", args.compare_rollouts, True,
                  OneAtATime(coder), OneAtATime(sandbox), True, 1, True),
                 *([("TRL GRPOTrainer's own tools= loop", args.compare_rollouts, "trl", coder, sandbox, True, 1,
                     True)] if args.trl_loop else [])]
    if args.planner_graph:  # the fastest tools row and the no-tool row again, the planner graphed
        fastest_box = tools_row[4]
        plan += [(f"{tools_row[0]}, planner graphed", *tools_row[1:8], True),
                 ("same tokens, no tool calls, planner graphed", args.rollouts, False, coder, sandbox, True, 1, True,
                  True),
                 *([("engine, batched tool calls, planner graphed", args.compare_rollouts, True, coder, sandbox,
                     True, 1, True, True)] if args.compare_rollouts else [])]
        print("warming up the graphed planner (one capture per shape) ...", file=sys.stderr, flush=True)
        run(args.rollouts, True, tools_row[3], fastest_box, graph=True)
        if args.compare_rollouts:
            run(args.compare_rollouts, True, coder, sandbox, graph=True)
    if args.attention_ablation:  # the fastest tools row's setting and the no-tool row, with the attention unpacked
        plan += [(f"{tools_row[0]}, attention unpacked", *tools_row[1:7], False),
                 ("same tokens, no tool calls, attention unpacked", args.rollouts, False, coder, sandbox, True, 1,
                  False)]
    fastest: dict[int, tuple[float, int, int, dict[str, float]]] = {}
    overheads = []  # each repeat's own tool overhead, from rows run minutes apart at most
    tool_rows = [i for i, (name, count, *rest) in enumerate(plan) if count == args.rollouts and rest[5]
                 and name.startswith("engine, batched tool calls") and "KV" not in name and "graphed" not in name]
    plain_row = next(i for i, (name, *_) in enumerate(plan) if name == "same tokens, no tool calls")
    for repeat in range(args.repeats):  # the rows in turn, again and again: a slow spell slows every row alike
        seconds_now = {}
        for index, (name, count, *setting) in enumerate(plan):
            print(f"measuring ({repeat + 1}/{args.repeats}): {name}, {count} rollouts ...", file=sys.stderr,
                  flush=True)
            result = run(count, *setting)
            print(f"  {result[0]:.2f} s, {result[1] / result[0]:,.0f} planner tokens/s, phases "
                  f"{ {k: round(v, 2) for k, v in result[3].items()} }", file=sys.stderr, flush=True)
            seconds_now[index] = result[0]
            if index not in fastest or result[0] < fastest[index][0]:
                fastest[index] = result
        overheads.append(min(seconds_now[i] for i in tool_rows) / seconds_now[plain_row])
    for index, (name, count, *_) in enumerate(plan):
        seconds, tokens, calls, phases = fastest[index]
        measured[(name, count)] = seconds
        rows.append([name, str(count), f"{seconds:.2f}", *(f"{phases[p]:.2f}" for p in PHASES),
                     f"{tokens / seconds:,.0f}", str(tokens), str(calls)])
    overhead = min(fastest[i][0] for i in tool_rows) / fastest[plain_row][0]
    serial = measured.get(("tools one rollout at a time (TRL tools= pattern)", args.compare_rollouts))
    speedup = serial / measured[("engine, batched tool calls", args.compare_rollouts)] if serial else float("nan")
    text = table(f"Rollouts ({args.shape} planner and coder, one model object, bf16, dynamic KV cache kept "
                 f"across rounds unless said, "
                 f"{args.segment_tokens} planner tokens per round, coder {args.coder_tokens} new tokens, "
                 f"torch {torch.__version__}, "
                 f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'})",
                 ["mode", "rollouts", "seconds", "in generate", "in coder", "in sandbox", "planner tokens/s",
                  "planner tokens", "tool calls"], rows)
    text += (f"\n\ntool overhead (fastest batched tools row / no tools, {args.rollouts} rollouts): {overhead:.2f}x "
             "(target <= 1.25x)")
    text += (f"\ntool overhead in each repeat (its fastest tools row / its no-tool row): "
             f"{', '.join(f'{o:.2f}x' for o in overheads)}; median {statistics.median(overheads):.2f}x")
    if args.attention_ablation:
        slow = [i for i, (name, *_) in enumerate(plan) if name.endswith("attention unpacked")]
        text += (f"\ntool overhead with the prefills' attention unpacked (transformers' own): "
                 f"{fastest[slow[0]][0] / fastest[slow[1]][0]:.2f}x")
    trl = measured.get(("TRL GRPOTrainer's own tools= loop", args.compare_rollouts))
    if trl:
        text += (f"\nbatched vs TRL's own tools= loop ({args.compare_rollouts} rollouts): "
                 f"{trl / measured[('engine, batched tool calls', args.compare_rollouts)]:.2f}x (target >= 4x)")
    if args.planner_graph:
        rate = {name: fastest[i][1] / fastest[i][0] for i, (name, count, *_) in enumerate(plan)
                if count == args.rollouts}
        text += (f"\nplanner graphed vs generate, planner tokens/s ({args.rollouts} rollouts): no tool calls "
                 f"{rate['same tokens, no tool calls, planner graphed']:,.0f} vs "
                 f"{rate['same tokens, no tool calls']:,.0f} "
                 f"({rate['same tokens, no tool calls, planner graphed'] / rate['same tokens, no tool calls']:.2f}x); "
                 f"with tool rounds {rate[f'{tools_row[0]}, planner graphed']:,.0f} vs {rate[tools_row[0]]:,.0f} "
                 "(targets: >= 20k tokens/s at 7B and 256 rows with tool rounds)")
        small = measured.get(("engine, batched tool calls, planner graphed", args.compare_rollouts))
        if small:
            big = measured[(f"{tools_row[0]}, planner graphed", args.rollouts)]
            text += (f"\nplanner graphed: {args.compare_rollouts} rollouts {small:.2f} s vs {args.rollouts} "
                     f"{big:.2f} s (target: clearly faster)")
            if trl:
                text += (f"\nplanner graphed vs TRL's own tools= loop ({args.compare_rollouts} rollouts): "
                         f"{trl / small:.2f}x (target >= 15x)")
    if serial:
        text += (f"\nbatched vs one rollout at a time ({args.compare_rollouts} rollouts): {speedup:.2f}x "
                 "(target >= 4x)")
    print(text, flush=True)  # before the breakdowns, which take a while
    breakdowns = []
    if args.breakdown:
        from breakdown import Breakdown  # bench/breakdown.py

        fastest_tools = (f"{variant(most, ready, 1)}, coder {args.coder_cache}" if args.coder_cache
                         else variant(most, ready, 1) for ready in {0, args.sandbox_ready})
        chosen = {*fastest_tools, "same tokens, no tool calls"}
        for name, count, *setting in plan:
            if name not in chosen or count != args.rollouts:
                continue
            print(f"breakdown: {name} ...", file=sys.stderr, flush=True)
            parts = Breakdown(model, tokenizer)
            with parts.active():
                seconds, _, _, phases = run(count, *setting)
            engine = [["engine", f"phase: {p}", "", f"{phases[p]:.3f}", ""] for p in PHASES]
            breakdowns.append(table(f"Breakdown: {name}, {count} rollouts, {seconds:.2f} s with every part "
                                    "synchronised", ["side", "part", "calls", "seconds", "ms per call"],
                                    engine + parts.rows() + parts.step_rows(args.segment_tokens - 1)))
    for box in boxes.values():
        box.box.close()
    return "\n".join(breakdowns)


@contextmanager
def unpacked_attention() -> Iterator[None]:
    """`coder.attention`'s name served by transformers' own SDPA attention for the block (an ablation)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from coder.attention import NAME, packed_sdpa

    AttentionInterface.register(NAME, sdpa_attention_forward)
    try:
        yield
    finally:
        AttentionInterface.register(NAME, packed_sdpa)


# --- profile -----------------------------------------------------------------------------------------------------

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

    from coder import CoderConfig, build_coder
    from coder.transformers_backend import shared_prefix
    from training.tiny import build_tokenizer

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
    from kernels import timed  # bench/kernels.py: CUDA events around the repeats

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


# --- step ---------------------------------------------------------------------------------------------------------

def step(args: argparse.Namespace) -> str:
    model = saved_model(args.shape, Path(args.work) / f"random-{args.shape}")
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("train_step.py")), "--model", str(model),
                           "--device", "cuda", "--steps", str(args.steps), "--group", str(args.group),
                           "--batch", str(args.batch), "--completion-tokens", str(args.completion_tokens),
                           "--isolation", args.isolation, *(["--planner-graph"] if args.planner_graph else [])],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return f"\nGRPO step ({args.shape} shape, LoRA, {args.batch} completions x {args.completion_tokens} tokens)" + \
        done.stdout


# --- memory -------------------------------------------------------------------------------------------------------

def memory(args: argparse.Namespace) -> str:
    import torch
    import yaml
    from transformers import AutoTokenizer

    from tests.scripted import CallsThenFree, StepClock
    from training import grpo
    from training.recipe import Recipe

    cuda = args.device == "cuda"
    work = Path(args.work)
    model = saved_model(args.shape, work / f"random-{args.shape}", device=args.device)
    data = work / "memory-data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"A farm holds {10**9 + i} eggs and sells {i} of them. "
                                                  "How many are left?", "answer": str(10**9)}) + "\n"
                            for i in range(64)))
    recipe = yaml.safe_load((Path(__file__).resolve().parent.parent / "training" / "recipes" /
                             "qwen2.5-7b-request.yaml").read_text())
    recipe["planner"] |= {"model": str(model), "max_completion_tokens": args.completion_tokens,
                          "reuse_cache": args.reuse, "cuda_graph": args.planner_graph and cuda}
    recipe["coder"] |= {"model": str(model), "device": args.device, "cuda_graph": args.coder_graph and cuda,
                        "cache_size": 0, "deduplicate": False}  # real requests differ; the forced ones do not
    recipe["data"] = {"path": str(data)}
    recipe["executor"] = {**recipe.get("executor", {}), "isolation": args.isolation}
    recipe["grpo"] |= {"output_dir": str(work / "memory-run"), "max_steps": 1, "report_to": "none",
                       "save_strategy": "no", **({} if cuda else {"use_cpu": True, "bf16": False})}
    recipe["logging"] = {"sample_every": 0}
    # The random planner would make no calls: every completion writes this call in its first rounds, then samples
    # freely to the token budget, and the random coder writes its whole max_new_tokens for each call.
    call = "Let me hand this on. <request>Subtract the eggs sold from the eggs held and print the result.</request>"
    forcer = CallsThenFree(AutoTokenizer.from_pretrained(model).encode(call, add_special_tokens=False),
                           args.tool_calls)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    gib = (lambda: torch.cuda.max_memory_allocated() / 2**30) if cuda else (lambda: float("nan"))
    started = time.perf_counter()
    clock = StepClock()
    built = Recipe.model_validate(recipe)
    run = grpo.build(built, logits_processors=[forcer, clock] if args.tool_calls else [clock])
    loaded = torch.cuda.memory_allocated() / 2**30 if cuda else float("nan")
    rollout_peak: list[float] = []
    rollout_call = run.rollout.__call__

    def measured_rollout(prompts, trainer):  # the peak of generation (planner and coder) alone
        out = rollout_call(prompts, trainer)
        rollout_peak.append(gib())
        return out

    run.trainer.rollout_func = measured_rollout
    try:
        run.trainer.train()
    finally:
        run.close()
    seconds = time.perf_counter() - started
    peak = gib()
    reserved = torch.cuda.max_memory_reserved() / 2**30 if cuda else float("nan")
    last = run.rollout.last
    calls = statistics.mean(len(t.tool_calls) for t in last)
    lengths = [len(t.completion_ids) for t in last]
    g, coder = recipe["grpo"], built.coder
    phases = ", ".join(f"{name} {value:.0f} s" for name, value in run.rollout.seconds.items())
    rows = [["after loading (planner with LoRA + coder)", f"{loaded:.1f}"],
            ["peak allocated by the rollouts (planner and coder generating)", f"{max(rollout_peak):.1f}"],
            ["peak allocated", f"{peak:.1f}"], ["peak reserved by the allocator", f"{reserved:.1f}"]]
    title = (f"Memory: {args.shape} planner (LoRA r{recipe['lora']['r']}, gradient checkpointing) + {args.shape} "
             f"coder (batch {coder.batch_size}, {coder.max_new_tokens} new tokens, cuda_graph "
             f"{'on' if coder.cuda_graph else 'off'}), bf16, one card; group {g['num_generations']}, "
             f"{g['per_device_train_batch_size']} completions per micro-batch x {g['gradient_accumulation_steps']}, "
             f"up to {args.completion_tokens} tokens; {len(last)} completions: {calls:.1f} tool calls each, "
             f"{min(lengths)}-{max(lengths)} tokens; planner "
             f"{'graphed (planner.cuda_graph)' if built.planner.cuda_graph else 'on generate'}, KV cache kept across "
             f"rounds: {'yes' if args.reuse and not built.planner.cuda_graph else 'no'}; one step in {seconds:.0f} s "
             f"(rollout: {phases})")
    per_call = [[f"planner generate call {k + 1}", str(batch), str(steps), f"{1000 * wall / max(1, steps - 1):.1f}"]
                for k, (batch, steps, wall) in enumerate(clock.summary())]
    return (table(title, ["what", "GiB"], rows) + f"\n\npeak allocated: {peak:.1f} GiB (target <= 75 GiB)"
            + table("The step's planner generate calls, in order (from the first decoding step to the last)",
                    ["call", "rows", "steps", "ms/step"], per_call))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["rollout", "step", "memory", "profile"], nargs="+")
    parser.add_argument("--isolation", choices=["full", "none"], default="full",
                        help="the sandbox's isolation; none where bubblewrap is missing (the GPU machine)")
    parser.add_argument("--shape", default=None, help="rollout: 7b; step: 1.5b")
    parser.add_argument("--rollouts", type=int, default=256)
    parser.add_argument("--compare-rollouts", type=int, default=64, help="0: skip the one-at-a-time comparison")
    parser.add_argument("--segment-tokens", type=int, default=85, help="planner tokens per round (3 rounds)")
    parser.add_argument("--coder-tokens", type=int, default=32)
    parser.add_argument("--coder-cache", choices=["static", "graph"],
                        help="rollout: add a row with the coder on the static cache, or on its CUDA-graph decoder "
                             "(coder.cuda_graph), with the most sandbox servers")
    parser.add_argument("--tool-chunks", type=int, nargs="*", default=[2],
                        help="rollout: rows with a round's calls in this many coder/sandbox chunks")
    parser.add_argument("--sandbox-servers", type=int, nargs="*", default=[4],
                        help="rollout: rows with the sandbox's jobs spread over this many fork servers")
    parser.add_argument("--sandbox-ready", type=int, default=0,
                        help="rollout: add a sandbox of the most servers keeping this many job processes forked "
                             "ahead (executor.ready)")
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True,
                        help="rollout: the rows without the coder's shared prefix and without KV reuse")
    parser.add_argument("--attention-ablation", action="store_true",
                        help="rollout: the fastest tools row's setting and the no-tool row again with the prefills' "
                             "attention unpacked (transformers' own, coder/attention.py)")
    parser.add_argument("--trl-loop", action="store_true",
                        help="rollout: with --compare-rollouts, a row through TRL GRPOTrainer's own tools= loop "
                             "(bench/trl_loop.py)")
    parser.add_argument("--planner-graph", action="store_true",
                        help="rollout: the fastest tools row, the no-tool row and the small batch again with the "
                             "planner on the CUDA-graph decoder (planner.cuda_graph); step: a row with it; "
                             "memory: the planner on it")
    parser.add_argument("--paired-only", action="store_true",
                        help="rollout: only the fastest setting's tools row and the no-tool row, for many paired "
                             "repeats (with --repeats)")
    parser.add_argument("--breakdown", action="store_true",
                        help="rollout: after the table, where the seconds go (bench/breakdown.py) in the fastest "
                             "tool rows and the no-tool row, one run each")
    parser.add_argument("--repeats", type=int, default=2,
                        help="rollout: each row's best of this many runs, the rows run in turn each time")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--completion-tokens", type=int, default=None, help="step: 256; memory: 2048")
    parser.add_argument("--tool-calls", type=int, default=2,
                        help="memory: calls forced into every completion (CallsThenFree); 0: the random planner's own")
    parser.add_argument("--coder-graph", action="store_true", help="memory: the coder on its CUDA-graph decoder")
    parser.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                        help="memory: the planner's KV cache kept across tool rounds (the recipe's setting)")
    parser.add_argument("--work", default=tempfile.gettempdir())
    parser.add_argument("--device", default="cuda",
                        help="rollout, profile, memory: cpu for a smoke run with --shape tiny")
    args = parser.parse_args()
    for what in args.what:
        shape = args.shape or {"rollout": "7b", "step": "1.5b", "memory": "7b", "profile": "7b"}[what]
        tokens = args.completion_tokens or {"step": 256, "memory": 2048}.get(what, 0)
        sub = argparse.Namespace(**{**vars(args), "shape": shape, "completion_tokens": tokens})
        print({"rollout": rollout, "step": step, "memory": memory, "profile": profile}[what](sub), flush=True)


if __name__ == "__main__":
    main()
