"""The shipped recipes load, and training/grpo.py runs the tiny one in every protocol."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from delegate.planner import AgentConfig
from delegate.planner.config import load_recipe
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
    """One step of the shipped tiny recipe updates the adapter it saves (an untrained LoRA saves one too). The random
    tiny model earns its rewards alike in a group (no answer, no call), which carries no signal: a term that grows
    with the reply's length is added to the recipe's own rewards, so that the step has something to learn."""
    from safetensors.torch import load_file

    from delegate.training.recipe import RewardsSection
    from delegate.training.rewards import REWARDS

    monkeypatch.setitem(REWARDS, "text_length", lambda prompts, completions, **kwargs:
                        [len(str(c)) / 100 for c in completions])
    data = yaml.safe_load((ROOT / "training" / "recipes" / "tiny-cpu.yaml").read_text())
    rewards = data.get("rewards", {})
    data["rewards"] = {**rewards, "schedule": [[start, {**weights, "text_length": 0.01}] for start, weights
                                               in rewards.get("schedule") or RewardsSection().schedule]}
    data["planner"].update(model=str(tiny_model_dir), protocol=protocol)
    data["coder"]["model"] = str(tiny_model_dir)
    data["data"]["path"] = str(ROOT / data["data"]["path"])
    data["grpo"].update(output_dir=str(tmp_path / "out"), max_steps=1)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)  # works from any working directory
    out = grpo.main(["--config", str(recipe)])
    assert (out / "agent.yaml").exists()
    lora_b = [v for k, v in load_file(str(out / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # PEFT starts every lora_B at zero: the step moved it


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


SEED_SCHEDULE = [[0, {"correctness": 1.0, "format": 2.0, "tool_use": 2.0}],
                 [256, {"correctness": 2.0, "format": 1.0, "tool_use": 1.0}]]


def schedule_warnings(caplog, data: dict) -> list[str]:
    caplog.clear()
    with caplog.at_level("WARNING", logger="delegate.training.recipe"):
        Recipe.model_validate(data)
    return [r.getMessage() for r in caplog.records if r.name == "delegate.training.recipe"]


SEED_OVERRIDES = ["rewards.options={}", "rewards.schedule=[[0, {correctness: 1, format: 2, tool_use: 2}], "
                  "[256, {correctness: 2, format: 1, tool_use: 1}]]"]  # the seed's arm, as docs/training.md gives it


@pytest.mark.parametrize("name", ["qwen2.5-0.5b-request", "qwen2.5-0.5b-code", "qwen2.5-7b-request",
                                  "qwen2.5-7b-code"])
def test_the_real_recipes_are_outcome_first_and_the_seed_arm_warns(caplog, name):
    """The shipped schedules let no wrong rollout out-score a right one; the seed's, given by override, does: in
    200 steps only its first stage runs, and under it a wrong answer with three clean calls (2 * 1.0 + 2 * 0.3)
    out-scores a right one after three failed calls (1 + 2 * 1.0 - 2 * 0.3)."""
    path = ROOT / "training" / "recipes" / f"{name}.yaml"
    assert schedule_warnings(caplog, load_recipe(path)) == []
    data = load_recipe(path, SEED_OVERRIDES)
    assert data["rewards"]["schedule"] == SEED_SCHEDULE
    messages = schedule_warnings(caplog, data)
    early = [m for m in messages if m.startswith("rewards.schedule stage from step 0:")]
    assert len(early) == 1
    assert "a wrong answer with a clean transcript and 3 clean calls scores 2.60, above a right answer after 3 " \
           "failed calls (2.40)" in early[0] and early[0].endswith("format and tool_use can outweigh correctness")
    if "max_steps" in data["grpo"]:
        assert [m for m in messages if "step 256" in m] == ["rewards.schedule stage from step 256 never applies: "
                                                            "grpo.max_steps is 200 (steps 0 to 199 run)"]


def test_a_correctness_dominant_schedule_does_not_warn(caplog):
    data = recipe_with(temperature=1.0)
    data["rewards"] = {"schedule": [[0, {"correctness": 1.0, "format": 0.1, "tool_use": 0.1}]]}
    data["grpo"]["max_steps"] = 200
    assert schedule_warnings(caplog, data) == []
    data["rewards"]["schedule"] = [[0, SEED_SCHEDULE[1][1]]]  # the seed's late stage alone, from step 0
    assert schedule_warnings(caplog, data) == []


def test_the_schedule_warnings_use_the_recipes_options_and_tool_limit(caplog):
    data = recipe_with(temperature=1.0)
    data["rewards"] = {"schedule": [[0, {"correctness": 1.0, "tool_use": 1.0}]],
                       "options": {"tool_use": {"bonus": 0.5, "penalty": 0.5, "cap": 1.0}}}
    (message,) = schedule_warnings(caplog, data)  # 2 clean calls: 1.0 against 1 - 1.0
    assert "2 clean calls scores 1.00, above a right answer after 2 failed calls (0.00)" in message
    data["planner"]["max_tool_calls"] = 1  # one call at most: 0.5 against 1 - 0.5, no reversal
    assert schedule_warnings(caplog, data) == []
    data["planner"].update(max_tool_calls=4, tools=False)  # no calls at all
    assert schedule_warnings(caplog, data) == []


def test_top_p_is_refused_in_training():
    with pytest.raises(ValueError, match=r"planner\.top_p is 0\.9: TRL recomputes the log-probabilities without"):
        Recipe.model_validate(recipe_with(temperature=1.0, top_p=0.9))
    assert Recipe.model_validate(recipe_with(temperature=1.0, top_p=1.0)).planner.top_p == 1.0


def test_no_tools_on_vllm_is_refused_in_training():
    data = recipe_with(temperature=1.0, backend="vllm", tools=False)
    data["grpo"]["use_vllm"] = True
    with pytest.raises(ValueError, match=r"planner\.tools is false with planner\.backend vllm"):
        Recipe.model_validate(data)


class WantsText:
    """Pushes a model towards writing `text`, whatever it wrote before (a logits processor)."""

    def __init__(self, tokenizer, text: str) -> None:
        self.tokenizer, self.text = tokenizer, text

    def __call__(self, input_ids, scores):
        for row, ids in enumerate(input_ids.tolist()):
            tail = self.tokenizer.decode(ids[-len(self.text):], skip_special_tokens=False)
            done = next((k for k in range(len(self.text), 0, -1) if tail.endswith(self.text[:k])), 0)
            rest = self.text[done:] or self.text
            scores[row, self.tokenizer(rest, add_special_tokens=False)["input_ids"][0]] += 50.0
        return scores


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from delegate.executor import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(timeout_s=5.0, workers=1)) as sandbox:
        yield (AutoTokenizer.from_pretrained(tiny_model_dir), AutoModelForCausalLM.from_pretrained(tiny_model_dir),
               sandbox)


@pytest.mark.parametrize("tools", [True, False])
def test_training_rollouts_honour_tools_false(tiny, tiny_model_dir, tools):
    """`planner.tools: false` in training as in `Agent`: no call allowed and the marker banned; a model pushed
    to open a call never writes its marker (with tools, the same push makes it write it)."""
    import torch

    from delegate.planner import build_protocol
    from delegate.planner.ban import BanText
    from delegate.planner.config import PlannerConfig
    from delegate.training.rollout import PlannerRollout

    tokenizer, model, sandbox = tiny
    planner = PlannerConfig(model=str(tiny_model_dir), protocol="code", temperature=1.0, max_completion_tokens=48,
                            tools=tools)
    protocol = build_protocol("code", None, 200, tokenizer)
    processors: list = []
    rollout = PlannerRollout(planner, protocol, tokenizer, sandbox, None, processors)
    processors.append(push := WantsText(tokenizer, protocol.markers.open))  # added later: still reaches generation
    assert rollout.limits.max_tool_calls == (4 if tools else 0)
    assert rollout.processors()[0] is push
    assert isinstance(rollout.processors()[-1], BanText) is not tools
    torch.manual_seed(0)
    trajectories = rollout.run(model.eval(), ["What is 6 times 7?", "What is 2 to the 10?"])
    opened = [protocol.markers.open in t.text for t in trajectories]
    if tools:
        assert all(opened)
    else:
        assert not any(opened) and not any(t.tool_calls or t.violations for t in trajectories)
