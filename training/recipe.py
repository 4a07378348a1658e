"""A training recipe: the agent's sections plus LoRA, data, rewards and TRL's `GRPOConfig` fields.

A wrong field fails when the recipe loads, naming it (`grpo` fields are checked by building the `GRPOConfig`).
A reward schedule under which a wrong rollout can out-score a right one, or with a stage that never applies, is
logged as a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from delegate.coder import CoderConfig
from delegate.executor import SandboxConfig
from delegate.planner.config import PlannerConfig, load_recipe
from delegate.training.rewards import reward_bounds

log = logging.getLogger(__name__)

class LoraSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="0: with dropout the policy that is trained is not "
                                                           "the one that sampled the rollouts (GRPO is on-policy)")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])


def _cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_precision() -> dict[str, bool]:
    """Training on CPU is float32 unless the recipe (or the caller) sets `bf16`/`fp16` itself. Why: TRL's configs
    default to `bf16=True`, which on CPU means bf16 autocast, emulated (slowly) on CPUs without bf16 units and
    rounded differently from one CPU to the next (figures in docs/results.md)."""
    return {"bf16": False, "fp16": False}


class CurriculumSection(BaseModel):
    """The curriculum as a step of training: pass rates under the starting policy, easiest first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="the ordered problems (JSONL, `training.curriculum`'s format): read when it "
                                  "exists, else computed by `build` with the starting policy and written there")
    samples: int = Field(8, gt=1, description="answers sampled per problem, at planner.temperature")
    drop_unsolved: bool = Field(False, description="also drop the problems no sample solved")


class DataSection(BaseModel):
    """Where the problems come from (`training.data.load_problems`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="a source name (gsm8k, math, big-value-gsm, numinamath, openthoughts), a hub "
                                  "dataset id, or a local JSON/JSONL/Parquet file")
    schema_: str | None = Field(None, alias="schema", description="the source whose schema a local file has "
                                                                   "(detected from its columns when left out)")
    split: str = "train"
    levels: list[int] | None = Field(None, description="MATH levels to keep, e.g. [3, 4, 5]")
    question_field: str | None = Field(None, description="the question column of any other schema")
    answer_field: str | None = Field(None, description="the answer column of any other schema")
    filters: bool = Field(True, description="drop multiple-choice, proof and concept questions, and unverifiable "
                                            "answers")
    limit: int | None = Field(None, gt=0)
    big_values: bool = Field(False, description="rebuild GSM8K-schema data as big-value GSM8K (9- to 11-digit "
                                                "numbers, answers recomputed exactly; training.bigvalue)")
    seed: int = Field(0, description="the big values' seed")
    curriculum: CurriculumSection | None = Field(None, description="order the problems by pass rate first "
                                                                  "(needs grpo.shuffle_dataset: false)")


class RewardsSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schedule: list[tuple[int, dict[str, float]]] = Field(
        default_factory=lambda: [(0, {"correctness": 1.0, "format": 0.5, "tool_use": 0.5})],
        description="[(from_step, {reward: weight})]; the seed: format and tool use double for 256 steps")
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="keyword options per reward")


class GroupsSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    filter: bool = Field(True, description="remove groups whose rewards are all equal from the loss")
    refill: bool = Field(False, description="refill removed groups with fresh prompts in the same step")
    refill_max_rounds: int = Field(2, ge=1, description="extra generation batches per step, at most, for refill")

    @model_validator(mode="after")
    def _refill_needs_filter(self) -> GroupsSection:
        if self.refill and not self.filter:
            raise ValueError("groups.refill needs groups.filter: true")
        return self


class LoggingSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_every: int = Field(10, ge=0, description="write trajectory samples every N steps (0: never)")
    samples_per_step: int = Field(8, gt=0)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    coder: CoderConfig = Field(default_factory=CoderConfig)
    executor: SandboxConfig = Field(default_factory=SandboxConfig)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection
    rewards: RewardsSection = Field(default_factory=RewardsSection)
    groups: GroupsSection = Field(default_factory=GroupsSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    grpo: dict[str, Any] = Field(default_factory=dict, description="fields of trl.GRPOConfig")

    @field_validator("grpo")
    @classmethod
    def _grpo_fields_exist(cls, value: dict[str, Any]) -> dict[str, Any]:
        from trl import GRPOConfig

        known = set(GRPOConfig.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"not GRPOConfig fields: {', '.join(unknown)}")
        return value

    @model_validator(mode="after")
    def _one_sampling_setting(self) -> Recipe:
        """The engine samples; TRL recomputes log-probabilities at its own temperature over its own budget. One
        setting for both, or the loss compares log-probabilities of two different distributions."""
        if self.planner.temperature == 0:
            raise ValueError("planner.temperature is 0: greedy rollouts make every group score the same, every group "
                             "is filtered and GRPO learns nothing; set planner.temperature (e.g. 1.0)")
        if self.planner.top_p < 1:
            raise ValueError(f"planner.top_p is {self.planner.top_p}: TRL recomputes the log-probabilities without "
                             "top-p, so the loss would compare the truncated distribution that sampled with the full "
                             "one; leave planner.top_p at 1.0 for training")
        for grpo_field, planner_field in (("temperature", "temperature"),
                                          ("max_completion_length", "max_completion_tokens")):
            if grpo_field in self.grpo and self.grpo[grpo_field] != getattr(self.planner, planner_field):
                raise ValueError(f"grpo.{grpo_field} ({self.grpo[grpo_field]}) differs from planner.{planner_field} "
                                 f"({getattr(self.planner, planner_field)}): the engine samples with the planner's "
                                 f"setting, so set planner.{planner_field} only")
        self._planner_fields_honoured()
        if self.data.curriculum is not None and self.grpo.get("shuffle_dataset", True):
            raise ValueError("data.curriculum orders the problems, and a shuffled dataset would undo it: set "
                             "grpo.shuffle_dataset: false")
        try:  # TRL's own checks (batch sizes against the group size, ...) now, not after the models are loaded
            self.grpo_config(check_hardware=False)
        except ValueError as exc:
            raise ValueError(f"grpo: {exc}") from exc
        return self

    def _planner_fields_honoured(self) -> None:
        """The planner fields that training applies (`adapter`: continued, trainable; `dtype`: the weights'), and a
        clear error for the ones it cannot: where the model lives is accelerate's, and vLLM is TRL's."""
        planner, grpo = self.planner, self.grpo
        if planner.device not in ("auto", "cpu"):
            raise ValueError(f"planner.device is {planner.device!r}: in training, accelerate puts each process's "
                             "model on that process's device; leave it 'auto' (CUDA_VISIBLE_DEVICES picks the cards) "
                             "or set 'cpu' together with grpo.use_cpu: true")
        if planner.device == "cpu" and not grpo.get("use_cpu") and _cuda_present():
            raise ValueError("planner.device is 'cpu' but training would put the model on the GPU: set "
                             "grpo.use_cpu: true as well (or planner.device: auto)")
        if (planner.backend == "vllm") != bool(grpo.get("use_vllm")):
            raise ValueError(f"planner.backend is {planner.backend!r} and grpo.use_vllm is "
                             f"{bool(grpo.get('use_vllm'))}: in training TRL drives vLLM, so set planner.backend: "
                             "vllm and grpo.use_vllm: true together (or neither)")
        if planner.backend == "vllm" and not planner.tools:
            raise ValueError("planner.tools is false with planner.backend vllm: banning the call marker in every "
                             "tokenization needs a vLLM engine built with Delegate's ban, and in training TRL builds "
                             "the engine; use the transformers backend for a planner without tools")
        half = {"float16": "bf16", "bfloat16": "fp16"}.get(planner.dtype)
        if half and grpo.get(half):
            raise ValueError(f"planner.dtype is {planner.dtype} but grpo.{half} is set: one half precision, not two")

    @model_validator(mode="after")
    def _warn_about_the_schedule(self) -> Recipe:
        """Warn about each stage that lets a wrong rollout out-score a right one (`rewards.reward_bounds`, with the
        recipe's reward options and tool-call limit), and about each stage that starts at or after
        `grpo.max_steps`, which never applies. Warnings, not errors: the seed's schedule stays a recipe option."""
        max_steps = self.grpo.get("max_steps", -1)
        max_calls = self.planner.max_tool_calls if self.planner.tools else 0
        for start, weights in self.rewards.schedule:
            if max_steps > 0 and start >= max_steps:
                log.warning("rewards.schedule stage from step %d never applies: grpo.max_steps is %d (steps 0 to %d "
                            "run)", start, max_steps, max_steps - 1)
                continue
            bounds = reward_bounds(weights, self.rewards.options, max_calls)
            if bounds is not None and bounds.reversed:
                log.warning("rewards.schedule stage from step %d: %s", start, bounds.describe())
        return self

    def grpo_config(self, check_hardware: bool = True) -> Any:
        """TRL's `GRPOConfig` of this recipe (the planner's temperature and budget included). Without
        `check_hardware` the precision flags are left out, so that a GPU recipe validates on any machine; `build`
        makes the full one first thing, on the machine that trains."""
        from trl import GRPOConfig

        fields = {"max_completion_length": self.planner.max_completion_tokens,
                  "temperature": self.planner.temperature, **self.grpo}
        if fields.get("use_cpu") or not _cuda_present():  # training on CPU: float32 unless asked (cpu_precision)
            fields = {**cpu_precision(), **fields}
        if not check_hardware:
            fields.update(bf16=False, fp16=False)
        return GRPOConfig(**fields)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
        """Load a recipe, with `section.field=value` overrides (`planner.config.load_recipe`)."""
        return cls.model_validate(load_recipe(path, overrides))
