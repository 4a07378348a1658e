"""Rollout benchmark: the engine with 2 forced tool calls per rollout, against the same planner tokens with no
tool calls (the tool overhead), and against calling the coder and the sandbox one rollout at a time (what
batching buys). Side by side in one run, on the tiny local models by default.

    python bench/rollout.py [--rollouts 32] [--device cpu] [--shape tiny|0.5b|1.5b|7b]

Models are built in memory with random weights (the local tokenizer, Qwen2.5-shaped layers); the coder is the
same model object as the planner (speed does not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

from delegate.coder import CoderConfig, build_coder
from delegate.executor import Sandbox, SandboxConfig
from delegate.planner import EngineLimits, RolloutEngine, TransformersGeneration, build_protocol
from delegate.training.tiny import build_model, build_tokenizer
from tests.scripted import Env, Say, ScriptedText

SHAPES = {  # Qwen2.5 layer shapes (the vocabulary is the local tokenizer's)
    "tiny": {},
    "0.5b": dict(hidden_size=896, intermediate_size=4864, layers=24, heads=14, kv_heads=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, layers=28, heads=12, kv_heads=2),
    "7b": dict(hidden_size=3584, intermediate_size=18944, layers=28, heads=28, kv_heads=4),
}

SYSTEM = "Solve the problem. Delegate computation."


class OneAtATime:
    """The coder or sandbox called once per rollout instead of once per round (what most loops do)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def write_programs(self, requests, contexts=None):
        return [self.inner.write_programs([r], None if contexts is None else [c])[0]
                for r, c in zip(requests, contexts or [None] * len(requests), strict=True)]

    def run_many(self, codes):
        return [self.inner.run_many([code])[0] for code in codes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--cache", choices=["dynamic", "static"], default=None, help="KV cache of generate")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--isolation", choices=["full", "none"], default="full",
                        help="the sandbox's isolation; none where bubblewrap is missing (the GPU machine)")
    args = parser.parse_args()

    import torch

    sandbox = Sandbox(SandboxConfig(timeout_s=10.0, isolation=args.isolation)).start()  # before CUDA
    tokenizer = build_tokenizer()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = build_model(tokenizer, **SHAPES[args.shape]).to(args.device, dtype).eval()
    coder = build_coder(CoderConfig(model=f"random {args.shape}", device=args.device, max_new_tokens=32,
                                    cache_size=0), model=model, tokenizer=tokenizer)
    protocol = build_protocol("request", None, 2000, tokenizer)
    questions = [f"Question {i}: what is {1000 + i} * {2000 + i} + {i}?" for i in range(args.rollouts)]
    probe = RolloutEngine(protocol, None, tokenizer, sandbox, coder)
    prompts = [probe.prompt_ids(SYSTEM, q) for q in questions]
    with_tools = {tuple(p): [Say(f"First the product. <request>{1000 + i} times {2000 + i}</request>"),
                             Env("</result>\n"), Say(f"Then add. <request>that product plus {i}</request>"),
                             Env("</result>\n"), Say(f"The answer is \\boxed{{{(1000 + i) * (2000 + i) + i}}}.")]
                  for i, p in enumerate(prompts)}

    def run(coder_like, sandbox_like, scripts, stops=True):
        forcer = ScriptedText(tokenizer, scripts)
        generator = TransformersGeneration(model, tokenizer, temperature=0.0, batch_size=args.rollouts,
                                           cache_implementation=args.cache, logits_processors=[forcer])
        proto = protocol if stops else build_protocol("code", None, 2000, tokenizer)
        engine = RolloutEngine(proto, generator, tokenizer, sandbox_like, coder_like, EngineLimits(1024, 4, 500))
        best = float("inf")
        for _ in range(args.repeats):
            forcer.forced = {p: [] for p in scripts}
            start = time.perf_counter()
            trajectories = engine.run(questions, prompts)
            best = min(best, time.perf_counter() - start)
        return best, trajectories

    print("measuring: batched tool calls ...", file=sys.stderr, flush=True)
    batched_s, trajectories = run(coder, sandbox, with_tools)
    sampled = [sum(t.env_mask) for t in trajectories]
    calls = sum(len(t.tool_calls) for t in trajectories)
    # The same planner tokens with no tool call: the same count per rollout, generated in one round.
    plain = {tuple(p): [Say(tokenizer.decode(_planner_tokens(t), skip_special_tokens=False)
                            .replace("<request>", "[ask]").replace("</request>", "[/ask]"))]
             for p, t in zip(prompts, trajectories, strict=True)}
    print("measuring: the same tokens without tools ...", file=sys.stderr, flush=True)
    plain_s, plain_trajectories = run(coder, sandbox, plain)
    print("measuring: coder and sandbox one rollout at a time ...", file=sys.stderr, flush=True)
    serial_s, _ = run(OneAtATime(coder), OneAtATime(sandbox), with_tools)
    sandbox.close()

    planner_tokens = sum(sampled)
    plain_tokens = sum(sum(t.env_mask) for t in plain_trajectories)
    rows = [("engine, batched tool calls", batched_s, planner_tokens, calls),
            ("same tokens, no tool calls", plain_s, plain_tokens, 0),
            ("coder+sandbox one rollout at a time", serial_s, planner_tokens, calls)]
    header = f"{'mode':<38} {'seconds':>8} {'rollouts/s':>10} {'tokens/s':>9} {'tool calls':>10}"
    print(f"\nRollout benchmark ({args.rollouts} rollouts, 2 tool calls each, device={args.device}, "
          f"{args.shape} shape: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"KV cache {args.cache or 'dynamic'}, torch {torch.__version__})\n")
    print(header)
    print("-" * len(header))
    for name, seconds, tokens, n_calls in rows:
        print(f"{name:<38} {seconds:8.2f} {args.rollouts / seconds:10.1f} {tokens / seconds:9.0f} {n_calls:10d}")
    print(f"\ntool overhead (batched tools / no tools): {batched_s / plain_s:.2f}x")
    print(f"what batching buys (one at a time / batched): {serial_s / batched_s:.2f}x")


def _planner_tokens(trajectory) -> list[int]:
    return [tok for tok, m in zip(trajectory.completion_ids, trajectory.env_mask, strict=True) if m]


if __name__ == "__main__":
    main()
