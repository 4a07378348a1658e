"""Run under `accelerate launch --num_processes 2`: the tiny recipe with scripted rollouts that take a different
number of rounds on each rank (rank 0 delegates twice, rank 1 never), recording per step what the test checks.

    accelerate launch --multi_gpu --num_processes 2 tests/scripts/two_ranks.py RECIPE.yaml OUT_DIR

Writes OUT_DIR/rank-<r>.json: per step, a checksum of every LoRA weight and the engine's rounds; and on the main
process OUT_DIR/log_history.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from transformers import TrainerCallback

from delegate.training import grpo
from delegate.training.recipe import Recipe
from delegate.training.rewards import REWARDS
from delegate.training.rollout import zero_stage
from tests.scripted import Env, Say, ScriptedText


def length(prompts, completions, **kwargs):
    """Varies with what rank 1's planner writes freely inside its box, so groups carry a signal."""
    return [float(len(c)) / 10 for c in completions]


class Record(TrainerCallback):
    def __init__(self, run, out: Path) -> None:
        self.run, self.out, self.steps = run, out, []

    def on_step_end(self, args, state, control, **kwargs):
        model = self.run.trainer.accelerator.unwrap_model(self.run.trainer.model)
        lora = sorted((name, param) for name, param in model.named_parameters() if "lora_" in name)
        partitioned = any(hasattr(param, "ds_id") for _, param in lora)  # ZeRO-3 holds a shard on each rank
        digest = hashlib.sha256()
        with gathered([param for _, param in lora], partitioned):
            for name, param in lora:
                digest.update(name.encode() + param.detach().float().cpu().numpy().tobytes())
        self.steps.append({"step": state.global_step, "lora_sha256": digest.hexdigest(),
                           "zero_stage": zero_stage(self.run.trainer), "partitioned": partitioned,
                           "rounds": self.run.rollout.rounds, "idle_rounds": self.run.rollout.idle_rounds,
                           "calls": [len(t.tool_calls) for t in self.run.rollout.last]})


def gathered(params, partitioned: bool):
    """The full parameters for reading (ZeRO-3 keeps a shard per rank); a no-op otherwise."""
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)


def main() -> None:
    recipe_path, out = sys.argv[1], Path(sys.argv[2])
    REWARDS["length"] = length
    processors: list = []  # filled once the trainer knows this process's rank
    run = grpo.build(Recipe.from_yaml(recipe_path), logits_processors=processors)
    rank = run.trainer.accelerator.process_index
    rollout = run.rollout
    from delegate.planner import RolloutEngine

    engine = RolloutEngine(rollout.protocol, None, rollout.tokenizer, rollout.sandbox, rollout.coder, rollout.limits)
    delegate_twice = [Say("```python\nprint(6 * 7)\n```\n"), Env("\n```\n"), Say("```python\nprint(42 + 0)\n```\n"),
                      Env("\n```\n"), Say("\\boxed{42}")]
    never = [Say("\\boxed{")]  # then the model writes freely until it closes the box or runs out
    scripts = {tuple(engine.prompt_ids(rollout.system_prompt, q)): delegate_twice if rank == 0 else never
               for q in run.trainer.train_dataset["prompt"]}
    processors.append(ScriptedText(rollout.tokenizer, scripts, then="free"))
    record = Record(run, out)
    run.trainer.add_callback(record)
    try:
        grpo.train(run)
    finally:
        run.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank-{rank}.json").write_text(json.dumps(record.steps))
    if run.trainer.accelerator.is_main_process:
        (out / "log_history.json").write_text(json.dumps(run.trainer.state.log_history))
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
