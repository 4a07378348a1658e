"""The shipped recipes load, and training/grpo.py runs the tiny one in every protocol."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from delegate.planner import AgentConfig
from delegate.training import grpo
from delegate.training.recipe import Recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "training" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipes_load(recipe):
    if "data" not in yaml.safe_load(recipe.read_text()):  # an agent's recipe (toy-cpu.yaml): no training sections
        assert AgentConfig.from_yaml(recipe).planner.model.startswith("runs/")
        return
    loaded = Recipe.from_yaml(recipe)
    assert loaded.grpo["output_dir"].startswith("runs/")


def test_seed_recipe_matches_the_seed():
    seed = Recipe.from_yaml(ROOT / "training" / "recipes" / "qwen2.5-7b-request.yaml")
    assert seed.planner.model == seed.coder.model == "Qwen/Qwen2.5-7B-Instruct"
    assert seed.planner.temperature == 0.9
    assert (seed.grpo["num_generations"], seed.grpo["beta"], seed.grpo["epsilon"]) == (8, 0.04, 0.2)
    # Not the seed's: a LoRA learning rate (its 1e-6 is a full fine-tuning one), no LoRA dropout, a training split
    # (it trained on big-value-gsm, its own evaluation set) in the curriculum's order.
    assert seed.grpo["learning_rate"] == 1e-5 and seed.lora.dropout == 0.0
    assert seed.data.path.endswith("gsm8k/train.jsonl") and seed.data.big_values and seed.data.curriculum
    assert seed.grpo["shuffle_dataset"] is False
    code = Recipe.from_yaml(ROOT / "training" / "recipes" / "qwen2.5-7b-code.yaml")
    assert code.planner.protocol == "code"


@pytest.mark.parametrize("protocol", ["request", "code", "chat", "repl"])
def test_tiny_recipe_trains_in_every_protocol(tmp_path, tiny_model_dir, protocol, monkeypatch):
    data = yaml.safe_load((ROOT / "training" / "recipes" / "tiny-cpu.yaml").read_text())
    data["planner"].update(model=str(tiny_model_dir), protocol=protocol)
    data["coder"]["model"] = str(tiny_model_dir)
    data["data"]["path"] = str(ROOT / data["data"]["path"])
    data["grpo"].update(output_dir=str(tmp_path / "out"), max_steps=1)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)  # works from any working directory
    out = grpo.main(["--config", str(recipe)])
    assert (out / "adapter_model.safetensors").exists() and (out / "agent.yaml").exists()


def recipe_with(**planner) -> dict:
    return {"planner": {"model": "m", **planner}, "data": {"path": "d.jsonl"}, "grpo": {"output_dir": "runs/x"}}


def test_a_training_recipe_must_sample():
    with pytest.raises(ValueError, match=r"planner\.temperature is 0"):
        Recipe.model_validate(recipe_with())  # the default temperature is 0: greedy
    assert Recipe.model_validate(recipe_with(temperature=0.7)).planner.temperature == 0.7


@pytest.mark.parametrize(("field", "planner_field"), [("temperature", "temperature"),
                                                       ("max_completion_length", "max_completion_tokens")])
def test_grpo_cannot_sample_differently_from_the_engine(field, planner_field):
    data = recipe_with(temperature=0.7, max_completion_tokens=256)
    data["grpo"][field] = 0.9 if field == "temperature" else 128
    with pytest.raises(ValueError, match=rf"grpo\.{field} .* differs from planner\.{planner_field}"):
        Recipe.model_validate(data)
    data["grpo"][field] = 0.7 if field == "temperature" else 256
    assert Recipe.model_validate(data)


def test_command_line_overrides_reach_the_recipe_and_are_validated():
    path = ROOT / "training" / "recipes" / "qwen2.5-0.5b-request.yaml"
    recipe = Recipe.from_yaml(path, ["executor.isolation=none", "planner.temperature=0.7", "grpo.temperature=0.7"])
    assert recipe.executor.isolation == "none" and recipe.planner.temperature == 0.7
    assert AgentConfig.from_yaml(path, ["executor.timeout_s=3"]).executor.timeout_s == 3.0
    with pytest.raises(ValueError, match=r"section\.field=value"):
        Recipe.from_yaml(path, ["executor.isolation"])
    with pytest.raises(ValueError, match="isolation"):
        Recipe.from_yaml(path, ["executor.isolation=off"])  # not a choice: refused, never silently open
    with pytest.raises(ValueError, match="isolaton"):
        AgentConfig.from_yaml(path, ["executor.isolaton=none"])


@pytest.mark.parametrize("overrides, words", [
    (["planner.device=cuda:1"], "accelerate"),
    (["planner.backend=vllm"], "use_vllm"),
    (["planner.dtype=float16", "grpo.bf16=true"], "one half precision"),
])
def test_planner_fields_training_cannot_honour_are_refused(overrides, words):
    with pytest.raises(ValueError, match=words):
        Recipe.from_yaml(ROOT / "training" / "recipes" / "toy-request.yaml", overrides)


def test_a_cpu_planner_on_a_gpu_machine_needs_use_cpu(monkeypatch):
    import torch

    path = ROOT / "training" / "recipes" / "toy-request.yaml"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as far as the check can tell
    with pytest.raises(ValueError, match="use_cpu"):
        Recipe.from_yaml(path, ["planner.device=cpu", "grpo.use_cpu=false"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # here: training runs on the CPU anyway
    assert Recipe.from_yaml(path, ["planner.device=cpu", "grpo.use_cpu=false"]).planner.device == "cpu"


def test_training_on_cpu_is_float32_unless_the_recipe_asks_for_half_precision(monkeypatch):
    """TRL's configs default to bf16: on CPU an autocast, emulated on a CPU without bf16 units (eight times slower on
    this project's machine), whose rounding differs between CPUs. A CPU recipe trains in float32; a flag the recipe
    sets still wins."""
    import torch

    path = ROOT / "training" / "recipes" / "toy-request.yaml"
    config = Recipe.from_yaml(path).grpo_config()
    assert (config.bf16, config.fp16) == (False, False)
    assert grpo.planner_dtype(Recipe.from_yaml(path).planner, config.bf16) == torch.float32
    assert Recipe.from_yaml(path, ["grpo.bf16=true"]).grpo_config().bf16 is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no GPU: training runs on the CPU anyway
    assert Recipe.from_yaml(path, ["grpo.use_cpu=false"]).grpo_config().bf16 is False
