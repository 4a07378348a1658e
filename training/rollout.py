"""GRPO's `rollout_func`: the planner's rollout engine with the trainer's current policy.

TRL calls it with the prompts of this process (each one as many times as the group has samples) and the trainer.
It returns one row per prompt: `prompt_ids`, `completion_ids`, `logprobs`, `env_mask` (TRL multiplies it into the
loss mask, so inserted tool results are out of the loss, KL, entropy and token counts) and the fields the reward
functions read: `predicted`, `tool_calls`, `finish_reason`, `violations`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from coder import Coder
from executor import Sandbox
from planner import EngineLimits, RolloutEngine, Trajectory, TransformersGeneration
from planner.protocols import Protocol


def question_of(prompt: Any) -> str:
    """The question in a dataset prompt: a string, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise ValueError(f"a prompt with no user message: {prompt!r}")
    return users[-1]


class PlannerRollout:
    def __init__(self, protocol: Protocol, tokenizer: Any, system_prompt: str, sandbox: Sandbox, coder: Coder | None,
                 limits: EngineLimits, temperature: float, top_p: float = 1.0, batch_size: int = 64,
                 cache_implementation: str | None = None, logits_processors: list[Any] | None = None) -> None:
        self.protocol = protocol
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.sandbox = sandbox
        self.coder = coder
        self.limits = limits
        self.sampling = dict(temperature=temperature, top_p=top_p, batch_size=batch_size,
                             cache_implementation=cache_implementation, logits_processors=logits_processors)
        self.last: list[Trajectory] = []  # the latest batch, for logging and the trainer's samples

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        from trl.models import unwrap_model_for_generation

        questions = [question_of(p) for p in prompts]
        if getattr(trainer.args, "use_vllm", False):
            self.last = self.run_vllm(trainer, questions)
            return self._finish(trainer, "train" if trainer.model.training else "eval")
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                                         gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs
                                         ) as model, torch.no_grad():
            was_training = model.training
            model.eval()
            try:
                self.last = self.run(model, questions)
            finally:
                model.train(was_training)
        return self._finish(trainer, "train" if was_training else "eval")

    def run_vllm(self, trainer: Any, questions: list[str]) -> list[Trajectory]:
        """Generation on TRL's colocated vLLM engine (TRL pushes the current weights to it before calling us).
        Not run on our machines: vLLM is too large for them; this follows vLLM's and TRL's documented APIs."""
        from planner.vllm_generation import VLLMGeneration

        vllm = trainer.vllm_generation
        if vllm.mode != "colocate":
            raise NotImplementedError("vllm_mode='server' with Delegate's multi-round rollouts needs every rank to "
                                      "take the same number of rounds; use vllm_mode='colocate' for now")
        if getattr(vllm, "enable_sleep_mode", False):
            raise NotImplementedError("vllm_enable_sleep_mode with Delegate's rollouts: turn it off for now")
        return self._roll(VLLMGeneration(vllm.llm, self.sampling["temperature"], self.sampling["top_p"]), questions)

    def _finish(self, trainer: Any, mode: str) -> dict[str, list[Any]]:
        for name, value in rollout_metrics(self.last, self.coder).items():
            trainer._metrics[mode][name].append(value)
        return to_trl(self.last, self.tokenizer.eos_token_id)

    def run(self, model: Any, questions: list[str]) -> list[Trajectory]:
        return self._roll(TransformersGeneration(model, self.tokenizer, **self.sampling), questions)

    def _roll(self, generator: Any, questions: list[str]) -> list[Trajectory]:
        engine = RolloutEngine(self.protocol, generator, self.tokenizer, self.sandbox, self.coder, self.limits)
        return engine.run(questions, [engine.prompt_ids(self.system_prompt, q) for q in questions])


def rollout_metrics(trajectories: list[Trajectory], coder: Coder | None) -> dict[str, float]:
    """What TRL does not log: tool use, tool errors by executor status, format violations by kind, rounds, the
    share of inserted tokens, and the coder's cache hit rate (so far)."""
    n = max(len(trajectories), 1)
    calls = [call for t in trajectories for call in t.tool_calls]
    statuses = Counter(call.result.status for call in calls)
    violations = Counter(v for t in trajectories for v in t.violations)
    tokens = sum(len(t.env_mask) for t in trajectories)
    metrics = {
        "tools/calls_per_rollout": len(calls) / n,
        "tools/error_rate": (len(calls) - statuses["ok"]) / len(calls) if calls else 0.0,
        "rollout/mean_rounds": sum(t.rounds for t in trajectories) / n,
        "rollout/inserted_token_frac": sum(t.inserted_tokens for t in trajectories) / tokens if tokens else 0.0,
        "rollout/answered": sum(t.answer is not None for t in trajectories) / n,
    }
    metrics |= {f"tools/status_{status}": count / n for status, count in statuses.items()}
    metrics |= {f"format/{kind}": count / n for kind, count in violations.items()}
    metrics |= {f"finish/{reason}": sum(t.finish_reason == reason for t in trajectories) / n
                for reason in {t.finish_reason for t in trajectories}}
    if coder is not None:
        metrics["coder/cache_hit_rate"] = coder.stats.hit_rate
    return metrics


def to_trl(trajectories: list[Trajectory], eos_id: int) -> dict[str, list[Any]]:
    """TRL's rollout output. A rollout that ended at its answer gets an EOS appended as an environment token
    (masked, log-probability 0): TRL treats a completion that does not end in EOS as truncated, which would
    misreport it and, with `mask_truncated_completions`, drop it from the loss."""
    out: dict[str, list[Any]] = {key: [] for key in ("prompt_ids", "completion_ids", "logprobs", "env_mask",
                                                     "predicted", "tool_calls", "finish_reason", "violations")}
    for t in trajectories:
        ended = t.finish_reason == "answer" and (not t.completion_ids or t.completion_ids[-1] != eos_id)
        out["prompt_ids"].append(list(t.prompt_ids))
        out["completion_ids"].append(t.completion_ids + [eos_id] * ended)
        out["logprobs"].append(t.logprobs + [0.0] * ended)
        out["env_mask"].append(t.env_mask + [0] * ended)
        out["predicted"].append(t.answer)
        out["tool_calls"].append([call.to_dict() for call in t.tool_calls])
        out["finish_reason"].append(t.finish_reason)
        out["violations"].append(list(t.violations))
    return out
