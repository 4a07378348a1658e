"""GPU benchmark: the 7B + 7B memory peak of one GRPO step; one table.

    python bench/gpu_memory.py [--completion-tokens 2048] [--tool-calls 2] [--coder-graph] [--no-reuse]
                               [--planner-graph]

The 7B request recipe (`training/recipes/qwen2.5-7b-request.yaml`: LoRA, gradient checkpointing, group 8) with a
random 7B planner and a 7B coder in bf16 on one card, one GRPO step, every completion forced to make `--tool-calls`
requests (`CallsThenFree`) so the coder generates in the step; the peak allocated memory, of the rollouts alone and
of the whole step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

from bench.shapes import common_arguments, saved_model, table  # bench/shapes.py


def memory(args: argparse.Namespace) -> str:
    import torch
    import yaml
    from transformers import AutoTokenizer

    from delegate.training import grpo
    from delegate.training.recipe import Recipe
    from tests.scripted import CallsThenFree, StepClock

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    parser.add_argument("--completion-tokens", type=int, default=None, help="default: 2048")
    parser.add_argument("--tool-calls", type=int, default=2,
                        help="calls forced into every completion (CallsThenFree); 0: the random planner's own")
    parser.add_argument("--coder-graph", action="store_true", help="the coder on its CUDA-graph decoder")
    parser.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                        help="the planner's KV cache kept across tool rounds (the recipe's setting)")
    parser.add_argument("--planner-graph", action="store_true",
                        help="the planner on the CUDA-graph decoder (planner.cuda_graph)")
    args = parser.parse_args(argv)
    args.shape = args.shape or "7b"
    args.completion_tokens = args.completion_tokens or 2048
    print(memory(args), flush=True)


if __name__ == "__main__":
    main()
