"""GRPO step time: our rollout function (through training/grpo.py's build) against TRL's own generation, on the
same model, prompts and completion lengths, with no tool calls. Side by side in one run.

    python bench/train_step.py [--steps 6] [--completion-tokens 64] [--model DIR] [--device cpu|cuda] [--planner-graph]

`--planner-graph` adds a row with the planner on the CUDA-graph decoder (`planner.cuda_graph`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

from delegate.training import grpo
from delegate.training.recipe import Recipe
from delegate.training.rewards import REWARDS
from delegate.training.tiny import build_tiny


def length(prompts, completions, **kwargs):
    """Varies between samples, so every group carries a gradient in both trainers."""
    return [float(len(c if isinstance(c, str) else c[-1]["content"])) for c in completions]


def step_times(trainer) -> tuple[float, float]:
    """Median seconds per step (the first, warm-up step left out) and mean completion length."""
    logs = [entry for entry in trainer.state.log_history if "step_time" in entry]
    return (statistics.median(float(e["step_time"]) for e in logs[1:]),
            statistics.mean(float(e["completions/mean_length"]) for e in logs[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--completion-tokens", type=int, default=64)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--batch", type=int, default=None, help="completions per step (default: one group)")
    parser.add_argument("--model", default=None, help="a local model directory (default: a tiny one built now)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--isolation", choices=["full", "none"], default="full",
                        help="the sandbox's isolation; none where bubblewrap is missing (the GPU machine)")
    parser.add_argument("--planner-graph", action="store_true", help="also: the planner on the CUDA-graph decoder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="delegate-bench-step-"))
    model = args.model or str(build_tiny(work / "model"))
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} * {i + 3}?", "answer": str(i * (i + 3))})
                            + "\n" for i in range(64)))
    REWARDS["length"] = length
    grpo_fields = {"max_steps": args.steps, "per_device_train_batch_size": args.batch or args.group,
                   "num_generations": args.group,
                   "learning_rate": 1e-4, "beta": 0.0, "logging_steps": 1, "report_to": "none",
                   "save_strategy": "no", "use_cpu": args.device == "cpu", "bf16": args.device != "cpu",
                   "max_completion_length": args.completion_tokens, "temperature": 1.0}
    def recipe_for(graph: bool) -> Recipe:
        return Recipe.model_validate({
            "planner": {"model": model, "device": "cpu" if args.device == "cpu" else "auto", "protocol": "code",
                        "temperature": 1.0, "max_completion_tokens": args.completion_tokens, "max_tool_calls": 0,
                        "cuda_graph": graph},
            "coder": {"model": model, "device": args.device},
            "executor": {"isolation": args.isolation},
            "data": {"path": str(data)},
            "rewards": {"schedule": [(0, {"length": 1.0})]},
            "groups": {"filter": False},
            "logging": {"sample_every": 0},
            "grpo": {"output_dir": str(work / ("ours-graph" if graph else "ours")), **grpo_fields},
        })

    ours: dict[bool, tuple[float, float]] = {}
    for graph in (False, True) if args.planner_graph else (False,):
        print(f"measuring: our rollout function{', planner graphed' if graph else ''} ...", file=sys.stderr,
              flush=True)
        run = grpo.build(recipe_for(graph))
        try:
            run.trainer.train()
            ours[graph] = step_times(run.trainer)
        finally:
            run.close()
    recipe = recipe_for(False)

    print("measuring: TRL's own generation ...", file=sys.stderr, flush=True)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from delegate.coder.config import resolve

    system = resolve(recipe.planner.prompt_file).read_text()
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": [{"role": "system", "content": system},
                                             {"role": "user", "content": r["prompt"]}]} for r in rows])
    lora = recipe.lora
    trl_trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model), reward_funcs=[length],
        args=GRPOConfig(output_dir=str(work / "trl"), **grpo_fields), train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model),
        peft_config=LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                               target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    trl_trainer.train()
    theirs = step_times(trl_trainer)

    header = f"{'generation':<36} {'s/step':>8} {'mean completion tokens':>23}"
    print(f"\nGRPO step time ({args.device}, {args.batch or args.group} completions in groups of {args.group}, "
          f"{args.completion_tokens} new tokens, "
          f"median of {args.steps - 1} steps)\n")
    print(header)
    print("-" * len(header))
    print(f"{'ours (rollout_func, engine)':<36} {ours[False][0]:8.3f} {ours[False][1]:23.1f}")
    if True in ours:
        print(f"{'ours, planner graphed':<36} {ours[True][0]:8.3f} {ours[True][1]:23.1f}")
    print(f"{'TRL generate (no tools)':<36} {theirs[0]:8.3f} {theirs[1]:23.1f}")
    print(f"\nours / TRL: {ours[False][0] / theirs[0]:.2f}x (target <= 1.15x)")
    if True in ours:
        print(f"ours, planner graphed / TRL: {ours[True][0] / theirs[0]:.2f}x (target <= 1.05x)")


if __name__ == "__main__":
    main()
