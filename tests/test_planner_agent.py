"""`Agent` and `AgentConfig`: from a recipe file, config errors that name the field, the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from delegate.planner import Agent, AgentConfig, solve
from tests.conftest import not_applicable
from tests.helpers import alive, descendants, wait_until
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
    questions = ["first question", "second question", "third"]
    with Agent.from_config(recipe) as agent:
        solutions = agent.solve_many(questions)
        prompts = [agent.engine.prompt_ids(agent.system_prompt, q) for q in questions]
    assert [s.trajectory.question for s in solutions] == questions
    assert [s.trajectory.prompt_ids for s in solutions] == prompts  # each rollout ran on its own question
    assert all(s.trajectory.finish_reason is not None for s in solutions)


def test_close_stops_what_the_agent_started(tmp_path, tiny_model_dir):
    agent = Agent.from_config(write_recipe(tmp_path / "recipe.yaml", tiny_model_dir))
    sandbox = agent.sandbox
    started = {sandbox.server_pid, *descendants(sandbox.server_pid)}
    assert len(started) >= 3  # bubblewrap, the server and its job processes
    agent.close()
    assert sandbox.server_pid is None
    assert wait_until(lambda: not any(alive(pid) for pid in started)), [pid for pid in started if alive(pid)]


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
        not_applicable("vLLM is installed here: the message for its absence cannot be shown")
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir, backend="vllm")
    with pytest.raises(ImportError, match=r"pip install 'delegate-rl\[vllm\]'"):
        Agent.from_config(recipe)


def test_command_line_prints_the_transcript_and_the_answer(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """`main` with a scripted planner: the transcript with the inserted result, the answer last, exit status 0."""
    from transformers import AutoTokenizer

    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir)
    question = "What is 123456789 * 987654321?"
    script = [Say("```python\nprint(123456789 * 987654321)\n```\n"), Env("\n```\n"),
              Say("\\boxed{121932631112635269}")]
    forcer = ScriptedText(AutoTokenizer.from_pretrained(tiny_model_dir), {})

    def scripted(config):  # the agent the command line builds, given the script for its own prompt
        agent = Agent(config, logits_processors=[forcer])
        prompt = tuple(agent.engine.prompt_ids(agent.system_prompt, question))
        forcer.scripts[prompt], forcer.forced[prompt] = script, []
        return agent

    monkeypatch.setattr(solve, "Agent", scripted)
    status = solve.main(["--config", str(recipe), "--show", question])
    out = capsys.readouterr().out
    assert status == 0 and out.endswith("(finish: answer; tool calls: 1)\n121932631112635269\n"), out
    assert "[inserted]```output\n121932631112635269\n```\n[/inserted]" in out


def test_command_line_without_an_answer_says_so_and_exits_1(tmp_path, tiny_model_dir):
    """The real command in its own process, the random tiny planner (greedy: it never answers here)."""
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir, protocol="request", max_completion_tokens=24)
    done = subprocess.run([sys.executable, "-m", "delegate.planner.solve", "--config", str(recipe), "--show",
                           "What is 2 + 2?"], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1 and done.stdout.splitlines()[-1] == "(no answer)", done.stdout
    assert done.stdout.splitlines()[-2].startswith("(finish: length; tool calls: ")


@pytest.mark.parametrize("broken, error", [
    ("field", "planner.temprature: Extra inputs are not permitted\n"),
    ("file", "no such file\n")], ids=["misspelled-field", "missing-file"])
def test_command_line_names_a_bad_recipe_without_a_traceback(tmp_path, tiny_model_dir, capsys, broken, error):
    """Exit status 2 (not 1, which means "no answer") and the recipe's error in one line on stderr, naming the field,
    through argparse's exit: no exception leaves `main` (in a process, a traceback)."""
    recipe = tmp_path / "recipe.yaml"
    if broken == "field":
        write_recipe(recipe, tiny_model_dir, temprature=0.5)
    with pytest.raises(SystemExit) as exited:
        solve.main(["--config", str(recipe), "2 + 2?"])
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == ""
    assert err.split(": error: ", 1)[1] == f"--config {recipe}: " + error, err
