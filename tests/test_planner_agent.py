"""`Agent` and `AgentConfig`: from a recipe file, config errors that name the field, the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from delegate.planner import Agent, AgentConfig
from tests.scripted import Env, Say, ScriptedText


def write_recipe(path, tiny_model_dir, protocol="code", **planner):
    recipe = {
        "planner": {"model": str(tiny_model_dir), "device": "cpu", "protocol": protocol,
                    "max_completion_tokens": 128, **planner},
        "coder": {"backend": "transformers", "model": str(tiny_model_dir), "device": "cpu", "max_new_tokens": 16},
        "executor": {"timeout_s": 5.0, "workers": 2},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_agent_from_config_solves_with_a_scripted_planner(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir)
    question = "What is 123456789 * 987654321?"
    config = AgentConfig.from_yaml(recipe)
    with Agent(config, logits_processors=[]) as probe:
        prompt = tuple(probe.engine.prompt_ids(probe.system_prompt, question))
        tokenizer = probe.tokenizer
    script = [Say("```python\nprint(123456789 * 987654321)\n```\n"), Env("\n```\n"),
              Say("\\boxed{121932631112635269}")]
    with Agent.from_config(recipe, logits_processors=[ScriptedText(tokenizer, {prompt: script})]) as agent:
        solution = agent.solve(question)
    assert solution.answer == "121932631112635269"
    assert solution.trajectory.tool_calls[0].result.stdout == "121932631112635269\n"


def test_solve_many_keeps_order(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir, protocol="request")
    with Agent.from_config(recipe) as agent:
        solutions = agent.solve_many(["first question", "second question", "third"])
    assert [s.trajectory.question for s in solutions] == ["first question", "second question", "third"]
    assert all(s.trajectory.finish_reason is not None for s in solutions)


def test_close_stops_what_the_agent_started(tmp_path, tiny_model_dir):
    agent = Agent.from_config(write_recipe(tmp_path / "recipe.yaml", tiny_model_dir))
    sandbox = agent.sandbox
    agent.close()
    assert sandbox.server_pid is None


@pytest.mark.parametrize("section, field, value", [("planner", "temprature", 0.5), ("coder", "modle", "x"),
                                                   ("executor", "timeout", 3), ("planner", "protocol", "smoke")])
def test_config_errors_name_the_field(tmp_path, tiny_model_dir, section, field, value):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir)
    data = yaml.safe_load(recipe.read_text())
    data[section][field] = value
    recipe.write_text(yaml.safe_dump(data))
    with pytest.raises(ValidationError) as error:
        AgentConfig.from_yaml(recipe)
    assert section in str(error.value) and field in str(error.value)


def test_unknown_section_is_named(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("planer:\n  model: x\n")
    with pytest.raises(ValidationError, match="planer"):
        AgentConfig.from_yaml(recipe)


def test_vllm_planner_backend_needs_vllm_and_says_how(tmp_path, tiny_model_dir):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir, backend="vllm")
    with pytest.raises(ImportError, match=r"pip install 'delegate-rl\[vllm\]'"):
        Agent.from_config(recipe)


def test_command_line_prints_the_transcript_and_answer(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir, protocol="request", max_completion_tokens=24)
    done = subprocess.run([sys.executable, "-m", "delegate.planner.solve", "--config", str(recipe), "--show",
                           "What is 2 + 2?"], capture_output=True, text=True, timeout=300)
    assert "(finish: " in done.stdout  # the random tiny planner rarely answers; the transcript is still shown
    assert done.returncode in (0, 1) and done.stdout.strip().splitlines()[-1]
