"""Train the planner with GRPO: `delegate train --config RECIPE.yaml` or `accelerate launch training/grpo.py ...`.

Reads top to bottom: the recipe; the sandbox (a fresh process, before any CUDA work); the tokenizer, protocol
and coder; the dataset; the reward functions; the rollout function (our engine with the trainer's policy);
TRL's `GRPOTrainer` with LoRA on the planner only; train; save the adapter and a recipe that loads it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable from any working directory
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml
from transformers import TrainerCallback

from delegate.coder import CoderConfig, build_coder
from delegate.executor import Sandbox
from delegate.planner import build_protocol
from delegate.training.checkpoints import latest_complete_checkpoint
from delegate.training.curves import plot_history
from delegate.training.data import load_problems
from delegate.training.recipe import Recipe
from delegate.training.rewards import WeightSchedule, scheduled_rewards
from delegate.training.rollout import PlannerRollout
from delegate.training.samples import SampleWriter

log = logging.getLogger("training.grpo")


def load_prompts(recipe: Recipe):
    """The training set as a `datasets.Dataset` with `prompt`, `answer` and `source` columns (before any
    curriculum: `curriculum_order` orders it)."""
    data = recipe.data
    return load_problems(data.path, schema=data.schema_, split=data.split, levels=data.levels, limit=data.limit,
                         filters=data.filters, question_field=data.question_field, answer_field=data.answer_field,
                         big_values=data.big_values, seed=data.seed)


def curriculum_order(recipe: Recipe, dataset: Any, sandbox: Sandbox, coder: Any,
                     logits_processors: list[Any] | None = None) -> Any:
    """`data.curriculum`: the problems ordered by pass rate under the starting policy (the recipe's planner, its
    adapter included), read from `data.curriculum.path` when its fingerprint matches this recipe's data and policy
    (else a `ValueError` naming what differs), or computed and written there first, fingerprint beside it."""
    from datasets import Dataset

    from delegate.planner import Agent, AgentConfig
    from delegate.training import curriculum

    spec = recipe.data.curriculum
    assert spec is not None
    path = Path(spec.path)
    problems = [dict(row) for row in dataset]
    expected = curriculum.recipe_fingerprint(recipe, problems, spec.samples, spec.drop_unsolved)
    if path.exists():
        curriculum.check_fingerprint(path, expected)
    else:
        log.info("curriculum: sampling %d answers for each of %d problems -> %s", spec.samples, len(dataset), path)
        config = AgentConfig(planner=recipe.planner, coder=recipe.coder, executor=recipe.executor)
        with Agent(config, coder=coder, sandbox=sandbox, logits_processors=logits_processors) as agent:
            scored = curriculum.pass_rates(agent, problems, spec.samples, recipe.planner.batch_size)
        curriculum.write_scored(curriculum.order(scored, spec.drop_unsolved), path)
        curriculum.write_fingerprint(path, expected)
    rows = curriculum.read_scored(path)
    log.info("curriculum: %d problems from %s, easiest first", len(rows), path)
    return Dataset.from_list([{"prompt": r.prompt, "answer": r.answer, "source": r.source} for r in rows])


def check_aggregation(recipe: Recipe, aggregation: str) -> None:
    """The schedule's weights are folded into each reward's output (TRL's `reward_weights` stay at 1), and
    `normalize_then_sum` normalizes each reward within its group first, which divides a weight out: under it,
    weights of different sizes in one stage would all count alike, so refuse them."""
    if aggregation != "normalize_then_sum":
        return
    for start, weights in recipe.rewards.schedule:
        sizes = {abs(w) for w in weights.values() if w}
        if len(sizes) > 1:
            raise ValueError(f"grpo.multi_objective_aggregation is normalize_then_sum, which normalizes each reward "
                             f"within its group, and the weights (stage from step {start}: {weights}) are applied "
                             f"inside the rewards: their sizes would be normalized away, every reward weighing "
                             f"alike; use sum_then_normalize, or equal weights")


@dataclass
class Run:
    """A built training run: the trainer and what it holds open."""

    recipe: Recipe
    trainer: Any
    rollout: PlannerRollout
    sandbox: Sandbox
    coder: Any

    def close(self) -> None:
        if self.coder is not None:
            self.coder.close()
        self.sandbox.close()


def build(recipe: Recipe, logits_processors: list[Any] | None = None) -> Run:
    """Everything up to a ready `GRPOTrainer`. `logits_processors` reach the planner's generation (tests use them
    to script tool calls into a tiny random model)."""
    config = recipe.grpo_config()  # TRL's checks, the hardware's included, before anything heavy is loaded
    check_aggregation(recipe, config.multi_objective_aggregation)
    rewards = scheduled_rewards(WeightSchedule(recipe.rewards.schedule), recipe.rewards.options)  # and the rewards'
    sandbox = Sandbox(recipe.executor).start()  # a fresh process, started before any CUDA work

    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from delegate.training.filtering import FilteringGRPOTrainer
    from delegate.training.guards import NonFiniteGradientGuard, StopOnSignal

    planner = recipe.planner
    tokenizer = AutoTokenizer.from_pretrained(planner.model)
    protocol = build_protocol(planner.protocol, planner.markers, planner.max_request_chars, tokenizer)
    coder = build_coder(coder_for_process(recipe.coder, config.device)) \
        if protocol.uses_coder and planner.tools else None  # no tools, no calls: no coder to load
    dataset = load_prompts(recipe)
    if recipe.data.curriculum is not None:
        dataset = curriculum_order(recipe, dataset, sandbox, coder, logits_processors)
    rollout = PlannerRollout(planner, protocol, tokenizer, sandbox, coder, logits_processors)
    model = AutoModelForCausalLM.from_pretrained(planner.model, dtype=planner_dtype(planner, config.bf16))
    lora: LoraConfig | None = lora_config(recipe)
    if planner.adapter:  # continue the given adapter (an SFT one, a checkpoint's), trainable; its own LoRA shape
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, planner.adapter, is_trainable=True)
        lora = None
        log.info("continuing the adapter %s (its own LoRA configuration; the recipe's lora section is not used)",
                 planner.adapter)
    samples = SampleWriter(rollout, tokenizer, config.output_dir, recipe.logging.sample_every,
                           recipe.logging.samples_per_step)
    trainer = FilteringGRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=dataset,
                                   processing_class=tokenizer, rollout_func=rollout, peft_config=lora,
                                   callbacks=[NonFiniteGradientGuard(), StopOnSignal(), AgentRecipeOnSave(recipe)],
                                   filter_groups=recipe.groups.filter, refill=recipe.groups.refill,
                                   refill_max_rounds=recipe.groups.refill_max_rounds, samples=samples)
    return Run(recipe, trainer, rollout, sandbox, coder)


def coder_for_process(coder: CoderConfig, device: Any) -> CoderConfig:
    """The coder's config for this process: a local (`transformers`) coder on `auto` goes on `device`, the trainer's
    device for this process (accelerate's local rank), not on the first GPU for every rank as the coder's `auto`
    alone would put it; any other choice is the recipe's."""
    if coder.backend == "transformers" and coder.device == "auto":
        return coder.model_copy(update={"device": str(device)})
    return coder


def planner_dtype(planner: Any, half: bool) -> Any:
    """The planner's torch dtype: `planner.dtype`, or for `auto` bf16 when `half` (the trainer's flags), else fp32."""
    import torch

    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    return dtypes.get(planner.dtype) or (torch.bfloat16 if half else torch.float32)


def lora_config(recipe: Recipe) -> Any:
    """PEFT's `LoraConfig` from the recipe's `lora` section (GRPO's and the warm start's)."""
    from peft import LoraConfig

    lora = recipe.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      task_type="CAUSAL_LM")


def write_agent_recipe(recipe: Recipe, adapter_dir: Path) -> Path:
    """`agent.yaml` in `adapter_dir`: the recipe's planner (with this adapter), coder and executor, which
    `Agent.from_config` loads."""
    planner = recipe.planner.model_dump(mode="json", exclude_none=True)
    agent = {"planner": {**planner, "adapter": str(adapter_dir.resolve())},
             "coder": recipe.coder.model_dump(mode="json", exclude_unset=True),
             "executor": recipe.executor.model_dump(mode="json", exclude_unset=True)}
    path = adapter_dir / "agent.yaml"
    path.write_text(yaml.safe_dump(agent, sort_keys=False))
    return path


class AgentRecipeOnSave(TrainerCallback):
    """Every checkpoint carries its own `agent.yaml`, so any checkpoint loads as an agent (to evaluate it while
    the run goes on, or to pick the best one)."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            write_agent_recipe(self.recipe, checkpoint)
            plot_history(state.log_history, Path(args.output_dir) / "curves.png", args.output_dir)


def train(run: Run) -> Path:
    """Train (from the latest checkpoint with `grpo.resume_from_checkpoint: true`, or `--resume`), then save the
    adapter and an agent recipe (`agent.yaml`) that loads it."""
    trainer, recipe = run.trainer, run.recipe
    resume = trainer.args.resume_from_checkpoint
    if resume is True or resume == "true":  # TRL's config may keep the flag as given
        resume = str(latest_complete_checkpoint(Path(trainer.args.output_dir)))
    trainer.train(resume_from_checkpoint=resume)
    out = Path(trainer.args.output_dir)
    trainer.save_model(str(out))
    if trainer.accelerator.is_main_process:
        log.info("saved the adapter and %s", write_agent_recipe(recipe, out))
        curves = plot_history(trainer.state.log_history, out / "curves.png", str(out))
        if curves is not None:
            log.info("training curves: %s", curves)
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> Path:
    """`delegate train` and `accelerate launch training/grpo.py`: the recipe, `--set` overrides and `--resume`."""
    from delegate.cli import add_recipe_arguments, load_config, setup_logging

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_recipe_arguments(parser, config_help="a training recipe (planner, coder, executor, lora, data, grpo, ...)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in grpo.output_dir (an error if there is none)")
    args = parser.parse_args(argv)
    setup_logging()
    recipe = load_config(parser, args, Recipe.from_yaml,
                         extra=["grpo.resume_from_checkpoint=true"] if args.resume else [])
    run = build(recipe)
    try:
        return train(run)
    finally:
        run.close()
        import torch.distributed as dist

        if dist.is_initialized():  # several processes: leave the group cleanly (gloo aborts at exit otherwise)
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
