"""`PlannerConfig` and `AgentConfig`: a recipe's `planner`, `coder` and `executor` sections."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from delegate.coder import CoderConfig
from delegate.coder.config import expand_model_path
from delegate.executor import SandboxConfig
from delegate.planner.protocols import Markers, ProtocolName


class PlannerConfig(BaseModel):
    """The planner model, its tool protocol and the rollout limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("Qwen/Qwen2.5-7B-Instruct", description="hub id or local path")
    adapter: str | None = Field(None, description="a LoRA adapter (PEFT) to load on the model")
    backend: Literal["transformers", "vllm"] = "transformers"
    device: str = Field("auto", description="'auto' (cuda when present), 'cpu', 'cuda:0', ...")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    protocol: ProtocolName = "request"
    prompt: str | None = Field(None, description="system prompt file; default prompts/planner_<protocol>.txt")
    markers: Markers | None = Field(None, description="override the protocol's markers")
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_completion_tokens: int = Field(2048, gt=0, description="the whole completion, inserted tokens included")
    max_tool_calls: int = Field(4, ge=0, description="per rollout")
    tools: bool = Field(True, description="false: the same planner with its tool disabled (the call marker is "
                                          "banned from generation and a call that slips through is refused)")
    max_result_chars: int = Field(1000, gt=0, description="of each rendered tool result")
    max_request_chars: int = Field(2000, gt=0, description="longer calls are refused with a tool error")
    stop_at_answer: bool = Field(True, description="a complete \\boxed{} ends the rollout")
    batch_size: int = Field(64, gt=0, description="rollouts per generate call")
    cache_implementation: Literal["dynamic", "static"] | None = Field(
        None, description="KV cache for transformers generate; 'static' is faster on the GPU")
    reuse_cache: bool = Field(True, description="transformers backend (dynamic cache, and the graphed decoder): "
                              "continue each tool round from the previous round's KV cache instead of re-running "
                              "the prefix")
    cuda_graph: bool = Field(False, description="transformers backend on a GPU: decode through the CUDA-graph "
                             "decoder (the one-token step captured once per shape and replayed) instead of "
                             "generate; on a CPU, generate")
    tool_chunks: int = Field(1, ge=1, description="a round's calls go to the coder in this many chunks; each chunk's "
                             "programs run in the sandbox while the coder writes the next")
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0, description="vllm backend")

    @field_validator("model", "adapter")
    @classmethod
    def _expand(cls, value: str | None) -> str | None:
        return None if value is None else expand_model_path(value)

    @property
    def prompt_file(self) -> str:
        return self.prompt or f"prompts/planner_{self.protocol}.txt"

    @model_validator(mode="after")
    def _graph_fits(self) -> PlannerConfig:
        if self.cuda_graph and self.backend != "transformers":
            raise ValueError("planner.cuda_graph is the transformers backend's decoder (vLLM has its own graphs)")
        if self.cuda_graph and self.cache_implementation is not None:
            raise ValueError("planner.cuda_graph brings its own preallocated cache: leave cache_implementation unset")
        return self


# A training recipe's own sections: training.recipe.Recipe reads them; the agent skips them.
TRAINING_SECTIONS = ("lora", "data", "rewards", "groups", "logging", "grpo")


class AgentConfig(BaseModel):
    """What `Agent` needs: a recipe's planner, coder and executor sections."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    planner: PlannerConfig = Field(default_factory=PlannerConfig)
    coder: CoderConfig = Field(default_factory=CoderConfig)
    executor: SandboxConfig = Field(default_factory=SandboxConfig)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> AgentConfig:
        """Load a recipe; a wrong or misspelled field fails here, naming it (e.g. `planner.temprature`).
        A training recipe's own sections are left to `training.recipe.Recipe`."""
        data = load_recipe(path, overrides)
        return cls.model_validate({k: v for k, v in data.items() if k not in TRAINING_SECTIONS})


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A recipe's YAML mapping with `section.field=value` overrides applied (the value read as YAML), as the
    command lines' `--set` gives them: `--set executor.isolation=none --set planner.temperature=0.7`.

    The merged mapping is then validated by the same pydantic models as the file, so an override is checked
    exactly like a field written there. The libraries weighed for the parsing itself, and why not (issue 27): TRL's
    `TrlParser` overrides flat dataclass fields (`--learning_rate`), not nested sections; pydantic-settings' CLI
    source would make `Recipe` a `BaseSettings` with a custom YAML source and change the flags to
    `--planner.temperature 0.7`; OmegaConf's `from_dotlist` does this merge but reads `${...}` in values as its own
    interpolation (recipes use `${DELEGATE_MODELS}` for the environment), and would pull math-verify's LaTeX
    parser down to antlr4 4.9 through its own pin. What is left here is a split on dots."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe is a mapping with planner, coder and executor sections")
    return apply_overrides(data, overrides)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`data` with each `section.field=value` (value read as YAML) set in place: the one reading of `--set` that
    every command shares (`delegate.cli`); a flat `field=value` sets a top-level key (the toy demo's world)."""
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {override!r}: expected section.field=value")
        *sections, leaf = key.strip().split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {override!r}: {section} is not a section")
        node[leaf] = yaml.safe_load(value)
    return data
