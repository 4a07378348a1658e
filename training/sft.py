"""Supervised fine-tuning of the planner on its own good trajectories: a warm start before GRPO.

Rejection sampling (as in STaR and RFT): sample the starting policy, keep the rollouts that answered right *and*
delegated (called a tool, every call ran cleanly, no format violation), and fine-tune a LoRA on them, token for
token as they were sampled: the loss covers the planner's own tokens (`env_mask` 1), never the prompt nor what the
tools inserted (as in GRPO). GRPO then continues that adapter (`planner.adapter`). Why: the real 0.5B calls in 4 %
of its request-mode answers, and GRPO from there took even those away (bench/results/gpu-real-grpo.md); a policy
that already delegates in some of its right answers gives GRPO something to reinforce.

    python -m delegate.training.curriculum --config training/recipes/qwen2.5-0.5b-request.yaml \\
        --out runs/curriculum/qwen2.5-0.5b-request.jsonl --trajectories runs/curriculum/request-rollouts.jsonl
    python -m delegate.training.sft --config training/recipes/qwen2.5-0.5b-request.yaml \\
        --records runs/curriculum/request-rollouts.jsonl --out runs/sft-request
    accelerate launch training/grpo.py --config training/recipes/qwen2.5-0.5b-request.yaml \\
        --set planner.adapter=runs/sft-request

Any trajectory records serve (`training.evaluate`'s `trajectories.jsonl` too), as long as they were sampled with
the recipe's planner prompt and tokenizer: a record whose prompt the recipe would not have built is refused.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("training.sft")


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    completion_mask: list[int]  # 1 where the token is in the loss


def why_not(record: dict[str, Any], min_calls: int = 1) -> str | None:
    """Why a trajectory record is not a warm-start example (None: it is one)."""
    if record.get("correct") is not True:
        return "wrong or unchecked answer"
    calls = record.get("tool_calls") or []
    if len(calls) < min_calls:
        return "too few tool calls"
    if any(call["result"]["status"] != "ok" for call in calls):
        return "a tool call failed"
    if record.get("violations"):
        return "format violation"
    if record.get("finish_reason") not in ("answer", "eos"):
        return f"finished by {record.get('finish_reason')}"
    return None


def select(records: list[dict[str, Any]], min_calls: int = 1, per_question: int = 2) -> list[dict[str, Any]]:
    """The records `why_not` keeps, at most `per_question` for each question (the first ones), so that the
    problems the policy already solves often do not fill the set; the counts of what was dropped are logged."""
    kept: list[dict[str, Any]] = []
    taken: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    for record in records:
        reason = why_not(record, min_calls)
        if reason is None and taken[record["question"]] >= per_question:
            reason = f"more than {per_question} for its question"
        if reason is None:
            taken[record["question"]] += 1
            kept.append(record)
        else:
            dropped[reason] += 1
    log.info("warm start: %d of %d trajectories kept (%d questions); dropped: %s", len(kept), len(records),
             len(taken), ", ".join(f"{n} {why}" for why, n in dropped.most_common()) or "none")
    return kept


def example(record: dict[str, Any], prompt_ids: list[int], eos_id: int, ends: set[int]) -> Example:
    """The record's tokens as sampled; `prompt_ids` are the ones the recipe builds for its question and must be
    the record's own. An answered rollout the engine stopped (no EOS sampled) gets EOS appended, in the loss: the
    policy should end its reply there, and GRPO's rollouts get the same EOS (`training.rollout.to_trl`)."""
    if list(record["prompt_ids"]) != prompt_ids:
        raise ValueError(f"a record's prompt is not the one this recipe builds for its question "
                         f"({record['question'][:60]!r}): it was sampled with another system prompt, protocol or "
                         f"tokenizer")
    completion, mask = list(record["completion_ids"]), list(record["env_mask"])
    if len(completion) != len(mask):
        raise ValueError(f"a record's env_mask ({len(mask)}) does not cover its completion ({len(completion)})")
    if not completion or completion[-1] not in ends:
        completion, mask = [*completion, eos_id], [*mask, 1]
    return Example(prompt_ids + completion, [0] * len(prompt_ids) + mask)


def train(model: Any, tokenizer: Any, examples: list[Example], out_dir: str | Path, *, epochs: float,
          learning_rate: float, batch_size: int = 32, seed: int = 0, use_cpu: bool = True) -> Path:
    """Supervised training with TRL's `SFTTrainer` on pre-tokenized examples; `completion_mask` becomes the labels
    (`completion_only_loss`). Saves the model (a PEFT model: its adapter) and tokenizer to `out_dir`."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from delegate.training.recipe import cpu_precision

    dataset = Dataset.from_dict({"input_ids": [e.input_ids for e in examples],
                                 "completion_mask": [e.completion_mask for e in examples]})
    precision = cpu_precision() if use_cpu else {}
    config = SFTConfig(output_dir=str(out_dir), num_train_epochs=epochs, learning_rate=learning_rate,
                       per_device_train_batch_size=batch_size, lr_scheduler_type="cosine", warmup_steps=0.05,
                       weight_decay=0.0, completion_only_loss=True, max_length=None, logging_steps=5,
                       save_strategy="no", report_to="none", use_cpu=use_cpu, seed=seed,
                       gradient_checkpointing=False,  # TRL turns it on; the models trained here only lose time to it
                       **precision)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]  # every logging_steps, if it reached one
    first_last = f"{losses[0]:.3f} -> {losses[-1]:.3f}, " if len(losses) > 1 else ""
    log.info("SFT %s: loss %smean %.3f over %d steps", out_dir, first_last, result.training_loss,
             trainer.state.global_step)
    return Path(out_dir)


def main(argv: list[str] | None = None, prog: str | None = None) -> Path:
    from delegate.cli import add_recipe_arguments, load_config, setup_logging
    from delegate.training.recipe import Recipe

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_recipe_arguments(parser, config_help="the GRPO recipe the warm start is for")
    parser.add_argument("--records", type=Path, nargs="+", required=True, help="trajectory records (JSONL)")
    parser.add_argument("--out", type=Path, required=True, help="the adapter's directory (with agent.yaml)")
    parser.add_argument("--min-calls", type=int, default=1)
    parser.add_argument("--per-question", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="a LoRA rate")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    setup_logging()
    recipe = load_config(parser, args, Recipe.from_yaml)

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from delegate.coder.config import resolve
    from delegate.coder.hf import eos_ids
    from delegate.planner.protocols import build_protocol
    from delegate.training.grpo import lora_config, planner_dtype, write_agent_recipe
    from delegate.training.records import read_records

    planner = recipe.planner
    if planner.adapter:
        raise ValueError("planner.adapter is set: the warm start trains a fresh LoRA on the base model")
    kept = select([r for path in args.records for r in read_records(path)], args.min_calls, args.per_question)
    if not kept:
        raise SystemExit("warm start: no trajectory answered right with a clean tool call: sample more (more "
                         "--samples, more problems, or easier ones)")
    tokenizer = AutoTokenizer.from_pretrained(planner.model)
    use_cpu = bool(recipe.grpo.get("use_cpu", False)) or not torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(planner.model, dtype=planner_dtype(planner, half=not use_cpu))
    configured = model.generation_config.eos_token_id  # GRPO appends the first of these (TRL's eos_token_ids)
    eos_id = (configured[0] if isinstance(configured, list) and configured else configured) or tokenizer.eos_token_id
    ends = eos_ids(model, tokenizer) | ({tokenizer.pad_token_id} - {None})
    protocol = build_protocol(planner.protocol, planner.markers, planner.max_request_chars, tokenizer)
    system_prompt = resolve(planner.prompt_file).read_text()
    examples = [example(r, tokenizer(protocol.prompt_text(tokenizer, system_prompt, r["question"]),
                                     add_special_tokens=False)["input_ids"], eos_id, ends) for r in kept]
    model = get_peft_model(model, lora_config(recipe))
    out = train(model, tokenizer, examples, args.out, epochs=args.epochs, learning_rate=args.learning_rate,
                batch_size=args.batch_size, seed=int(recipe.grpo.get("seed", 0)), use_cpu=use_cpu)
    write_agent_recipe(recipe, out)
    log.info("warm start: %d examples -> %s; continue it with --set planner.adapter=%s", len(examples), out, out)
    return out


if __name__ == "__main__":
    main()
