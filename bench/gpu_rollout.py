"""GPU benchmark: our engine's rollouts with tool calls against the same tokens without them, against the tool calls
made one rollout at a time (the pattern of TRL's `tools=` loop) and against TRL's own loop; one table.

    python bench/gpu_rollout.py [--shape 7b] [--rollouts 256] [--compare-rollouts 64] [--sandbox-servers 4 8]
                                [--sandbox-ready 256] [--coder-cache graph] [--repeats 3] [--breakdown]
                                [--trl-loop] [--paired-only] [--attention-ablation] [--planner-graph]

Random Qwen2.5 shapes (`bench/shapes.py`). Our engine with 2 tool calls per rollout (forced by `PlannedScript`, one
tensor op per step; a real program per call), with the sandbox on 1 and `--sandbox-servers` fork servers (the most
of them also with `--sandbox-ready` job processes forked ahead) and the calls in 1 or `--tool-chunks` chunks; with
`--coder-cache`, the coder on the static cache or its CUDA-graph decoder (`coder.cuda_graph`); the coder prefilling
its whole prompt (`share_prefix` off); no KV reuse; the same planner tokens with no tool calls (the tool overhead),
and the tool calls made one rollout at a time, the coder at batch 1 and the sandbox one job at a time: the pattern
of TRL's built-in `tools=` loop, which calls each rollout's tools in turn (DESIGN.md). `--trl-loop` adds a row
through TRL's own loop (`GRPOTrainer`'s `tools=`, `bench/trl_loop.py`) with the same model, the coder and the
sandbox wrapped as one tool function. `--planner-graph`: rows with the planner on the CUDA-graph decoder
(`planner.cuda_graph`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

from bench.shapes import SYSTEM, common_arguments, random_model, table, unpacked_attention  # bench/shapes.py


def rollout(args: argparse.Namespace) -> str:
    import torch

    from bench.rollout import OneAtATime  # bench/rollout.py: tools one rollout after another (TRL's tools= pattern)
    from bench.trl_loop import trl_tools_rollouts  # bench/trl_loop.py
    from delegate.coder import CoderConfig, build_coder
    from delegate.executor import Sandbox, SandboxConfig
    from delegate.planner import EngineLimits, RolloutEngine, TransformersGeneration, build_protocol
    from delegate.planner.engine import PHASES
    from delegate.planner.graph_generation import GraphGeneration
    from delegate.training.tiny import build_tokenizer
    from tests.scripted import PlannedScript

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
        from bench.breakdown import Breakdown  # bench/breakdown.py

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--rollouts", type=int, default=256)
    parser.add_argument("--compare-rollouts", type=int, default=64, help="0: skip the one-at-a-time comparison")
    parser.add_argument("--segment-tokens", type=int, default=85, help="planner tokens per round (3 rounds)")
    parser.add_argument("--coder-tokens", type=int, default=32)
    parser.add_argument("--coder-cache", choices=["static", "graph"],
                        help="add a row with the coder on the static cache, or on its CUDA-graph decoder "
                             "(coder.cuda_graph), with the most sandbox servers")
    parser.add_argument("--tool-chunks", type=int, nargs="*", default=[2],
                        help="rows with a round's calls in this many coder/sandbox chunks")
    parser.add_argument("--sandbox-servers", type=int, nargs="*", default=[4],
                        help="rows with the sandbox's jobs spread over this many fork servers")
    parser.add_argument("--sandbox-ready", type=int, default=0,
                        help="add a sandbox of the most servers keeping this many job processes forked "
                             "ahead (executor.ready)")
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True,
                        help="the rows without the coder's shared prefix and without KV reuse")
    parser.add_argument("--attention-ablation", action="store_true",
                        help="the fastest tools row's setting and the no-tool row again with the prefills' "
                             "attention unpacked (transformers' own, coder/attention.py)")
    parser.add_argument("--trl-loop", action="store_true",
                        help="with --compare-rollouts, a row through TRL GRPOTrainer's own tools= loop "
                             "(bench/trl_loop.py)")
    parser.add_argument("--planner-graph", action="store_true",
                        help="the fastest tools row, the no-tool row and the small batch again with the planner "
                             "on the CUDA-graph decoder (planner.cuda_graph)")
    parser.add_argument("--paired-only", action="store_true",
                        help="only the fastest setting's tools row and the no-tool row, for many paired "
                             "repeats (with --repeats)")
    parser.add_argument("--breakdown", action="store_true",
                        help="after the table, where the seconds go (bench/breakdown.py) in the fastest "
                             "tool rows and the no-tool row, one run each")
    parser.add_argument("--repeats", type=int, default=2,
                        help="each row's best of this many runs, the rows run in turn each time")
    args = parser.parse_args(argv)
    args.shape = args.shape or "7b"
    print(rollout(args), flush=True)


if __name__ == "__main__":
    main()
