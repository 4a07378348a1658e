"""The curriculum: pass rates through the real engine, solved problems dropped, easiest first."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from delegate.planner import Agent, AgentConfig
from delegate.training import curriculum
from delegate.training.curriculum import Scored, order
from delegate.training.records import read_records
from tests.scripted import Env, Say, ScriptedText


def test_order_drops_solved_and_sorts_easy_to_hard():
    scored = [Scored("a", "1", 0.25), Scored("b", "2", 1.0), Scored("c", "3", 0.75), Scored("d", "4", 0.0),
              Scored("e", "5", 0.75)]
    assert [s.prompt for s in order(scored)] == ["c", "e", "a", "d"]  # ties keep their order
    assert [s.prompt for s in order(scored, drop_unsolved=True)] == ["c", "e", "a"]


def test_the_progress_bar_moves_per_finished_sample_not_per_batch(monkeypatch):
    """Issue 43: the bar moves as each sample finishes (`Agent.solve_many`'s `on_finish`), not once per batch."""
    from types import SimpleNamespace

    steps: list[int] = []

    class CountingBar(curriculum.tqdm):
        def update(self, n=1):
            steps.append(n)
            return super().update(n)

    class Finishing:  # solves every question with "4", reporting each one as the engine does
        config = SimpleNamespace(planner=SimpleNamespace(temperature=1.0))

        def solve_many(self, questions, on_finish=None):
            for i in range(len(questions)):
                if on_finish is not None:
                    on_finish(i)
            return [SimpleNamespace(answer="4") for _ in questions]

    monkeypatch.setattr(curriculum, "tqdm", CountingBar)
    scored = curriculum.pass_rates(Finishing(), [{"prompt": "2 + 2?", "answer": "4"}, {"prompt": "1 + 1?",
                                                                                       "answer": "2"}], 3, batch=4)
    assert [s.pass_rate for s in scored] == [1.0, 0.0] and steps == [1] * 6


def test_command_samples_with_the_engine_and_writes_the_order(tmp_path, tiny_model_dir, caplog):
    problems = {"What is 6 times 7?": "42", "What is 2 plus 2?": "4", "What is 10 minus 3?": "7"}
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in problems.items()))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "planner": {"model": str(tiny_model_dir), "device": "cpu", "protocol": "code", "max_completion_tokens": 64,
                    "temperature": 1.0},
        "coder": {"model": str(tiny_model_dir), "device": "cpu"},
        "executor": {"timeout_s": 5.0, "workers": 2},
        "data": {"path": str(data)},
        "grpo": {"output_dir": str(tmp_path / "out")},
    }))
    # A scripted planner: computes the first problem right, the second wrong, and never answers the third.
    scripts = {"What is 6 times 7?": [Say("```python\nprint(6 * 7)\n```\n"), Env("\n```\n"), Say("\\boxed{42}")],
               "What is 2 plus 2?": [Say("\\boxed{5}")],
               "What is 10 minus 3?": [Say("I do not know.")]}
    config = AgentConfig.from_yaml(recipe)
    with Agent(config) as probe:
        prompts = {tuple(probe.engine.prompt_ids(probe.system_prompt, q)): s for q, s in scripts.items()}
        tokenizer = probe.tokenizer
    with caplog.at_level(logging.WARNING, logger="training.curriculum"):
        out = curriculum.main(["--config", str(recipe), "--out", str(tmp_path / "curriculum.jsonl"), "--samples",
                               "2", "--trajectories", str(tmp_path / "rollouts.jsonl")],
                              logits_processors=[ScriptedText(tokenizer, prompts)])
    # The scripted planner answers every sample alike: the rates are all 0 or 1, and the curriculum says so.
    assert any("every pass rate is 0 or 1" in r.getMessage() and "temperature 1.0" in r.getMessage()
               for r in caplog.records)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"prompt": "What is 2 plus 2?", "answer": "4", "pass_rate": 0.0, "source": "data"},
                    {"prompt": "What is 10 minus 3?", "answer": "7", "pass_rate": 0.0, "source": "data"}]  # 6 x 7
    # is always solved; the source is the file's name, as the data loader labels a file without a source column
    sampled = read_records(tmp_path / "rollouts.jsonl")  # every sample, as a record: the warm start's pool
    assert [(r["question"], r["correct"], len(r["tool_calls"])) for r in sampled] == [
        ("What is 6 times 7?", True, 1)] * 2 + [("What is 2 plus 2?", False, 0)] * 2 + [
        ("What is 10 minus 3?", False, 0)] * 2
    assert all(r["reference"] == problems[r["question"]] for r in sampled)
    # The command writes the fingerprint that a recipe with this file as data.curriculum.path checks.
    from delegate.training.grpo import load_prompts
    from delegate.training.recipe import Recipe

    loaded = Recipe.from_yaml(recipe)
    curriculum.check_fingerprint(out, curriculum.recipe_fingerprint(loaded, load_prompts(loaded), 2, False))
    dropped = curriculum.main(["--config", str(recipe), "--out", str(tmp_path / "c2.jsonl"), "--samples", "2",
                               "--drop-unsolved"], logits_processors=[ScriptedText(tokenizer, prompts)])
    assert dropped.read_text() == ""


def test_the_curriculum_is_a_step_of_training(tmp_path, tiny_model_dir):
    """`data.curriculum` in a recipe: `grpo.build` samples the starting policy, writes the order, and trains on it
    easiest first; a second build reads the file instead of sampling again."""
    from delegate.training import grpo
    from delegate.training.recipe import Recipe

    problems = {"What is 2 plus 2?": "4", "What is 6 times 7?": "42", "What is 10 minus 3?": "7"}
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in problems.items()))
    order_file = tmp_path / "curriculum.jsonl"
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "planner": {"model": str(tiny_model_dir), "device": "cpu", "protocol": "code", "max_completion_tokens": 64,
                    "temperature": 1.0},
        "coder": {"model": str(tiny_model_dir), "device": "cpu"},
        "executor": {"timeout_s": 5.0, "workers": 2},
        "data": {"path": str(data), "curriculum": {"path": str(order_file), "samples": 2}},
        "grpo": {"output_dir": str(tmp_path / "out"), "use_cpu": True, "shuffle_dataset": False, "max_steps": 1,
                 "per_device_train_batch_size": 4, "num_generations": 4, "report_to": "none"},
    }))
    scripts = {"What is 6 times 7?": [Say("\\boxed{42}")],  # always right
               "What is 2 plus 2?": [Say("\\boxed{5}")],  # never: kept, first of the unsolved in file order
               "What is 10 minus 3?": [Say("\\boxed{6}")]}  # never
    config = AgentConfig.from_yaml(recipe_path)
    with Agent(config) as probe:
        prompts = {tuple(probe.engine.prompt_ids(probe.system_prompt, q)): s for q, s in scripts.items()}
        tokenizer = probe.tokenizer
    run = grpo.build(Recipe.from_yaml(recipe_path), logits_processors=[ScriptedText(tokenizer, prompts)])
    try:
        ordered = [row["prompt"] for row in run.trainer.train_dataset]
    finally:
        run.close()
    assert ordered == ["What is 2 plus 2?", "What is 10 minus 3?"]  # 6 x 7 solved by every sample: dropped
    written = order_file.stat().st_mtime_ns
    again = grpo.build(Recipe.from_yaml(recipe_path))  # no script: a second sampling would not match the file
    try:
        assert [row["prompt"] for row in again.trainer.train_dataset] == ordered
    finally:
        again.close()
    assert order_file.stat().st_mtime_ns == written
    with pytest.raises(ValueError, match="shuffle_dataset"):
        Recipe.from_yaml(recipe_path, ["grpo.shuffle_dataset=true"])


STALE_PROBLEMS = {"What is 2 plus 2?": "4", "What is 6 times 7?": "42", "What is 10 minus 3?": "7"}


def stale_recipe(tmp_path, *overrides):
    """A recipe (never sampled here) with `data.curriculum` at `tmp_path/curriculum.jsonl` over three problems."""
    from delegate.training.recipe import Recipe

    data = tmp_path / "data.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in STALE_PROBLEMS.items()))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "planner": {"model": "tiny/never-loaded", "device": "cpu", "protocol": "code", "temperature": 1.0},
        "data": {"path": str(data), "curriculum": {"path": str(tmp_path / "curriculum.jsonl"), "samples": 2}},
        "grpo": {"output_dir": str(tmp_path / "out"), "use_cpu": True, "shuffle_dataset": False},
    }))
    return Recipe.from_yaml(path, list(overrides))


def ordered_under(recipe):
    """`grpo.curriculum_order` for `recipe`'s own problems, with no sandbox, coder or sampling."""
    from delegate.training import grpo

    return [row["prompt"] for row in grpo.curriculum_order(recipe, grpo.load_prompts(recipe), None, None)]


def build_file_for(recipe, scored):
    """The curriculum file and its fingerprint as `recipe`'s build would have written them."""
    from delegate.training.grpo import load_prompts

    path = curriculum.Path(recipe.data.curriculum.path)
    curriculum.write_scored(scored, path)
    spec = recipe.data.curriculum
    curriculum.write_fingerprint(path, curriculum.recipe_fingerprint(recipe, load_prompts(recipe), spec.samples,
                                                                     spec.drop_unsolved))
    return path


def test_a_curriculum_file_built_for_other_data_or_policy_is_refused(tmp_path, monkeypatch):
    """Issue 47: the file was read whenever it existed, and replaced the training set (a 3-row recipe trained on
    the 1 row of a file built with `data.limit: 1`, with that file's old answer). Now its fingerprint must match."""
    monkeypatch.setattr(curriculum, "pass_rates", lambda *a, **k: pytest.fail("a matching file is not resampled"))
    build_file_for(stale_recipe(tmp_path, "data.limit=1"), [Scored("What is 2 plus 2?", "5", 0.5, "data")])
    with pytest.raises(ValueError, match=r"built for another run \(data\.limit: file 1, recipe null; "
                                         r"rows: file 1, recipe 3;.*the rows' answers differ"):
        ordered_under(stale_recipe(tmp_path))
    with pytest.raises(ValueError, match=r"curriculum\.samples: file 2, recipe 4\)"):
        ordered_under(stale_recipe(tmp_path, "data.limit=1", "data.curriculum.samples=4"))
    with pytest.raises(ValueError, match=r"planner\.temperature: file 1\.0, recipe 0\.7\)"):
        ordered_under(stale_recipe(tmp_path, "data.limit=1", "planner.temperature=0.7"))
    assert ordered_under(stale_recipe(tmp_path, "data.limit=1")) == ["What is 2 plus 2?"]  # read, not resampled

    # The same count and prompts, one answer corrected in the data since: only that is named.
    (tmp_path / "data.jsonl").write_text((tmp_path / "data.jsonl").read_text().replace('"4"', '"four"'))
    with pytest.raises(ValueError, match=r"another run \(the rows' answers differ\)"):
        ordered_under(stale_recipe(tmp_path, "data.limit=1"))


def test_the_starting_adapters_weights_are_part_of_the_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setattr(curriculum, "pass_rates", lambda *a, **k: pytest.fail("a matching file is not resampled"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"sft step 100")
    recipe = stale_recipe(tmp_path, f"planner.adapter={adapter}")
    build_file_for(recipe, [Scored("What is 6 times 7?", "42", 0.5, "data")])
    assert ordered_under(recipe) == ["What is 6 times 7?"]
    (adapter / "adapter_model.safetensors").write_bytes(b"sft step 200")  # same path, retrained
    with pytest.raises(ValueError, match=r"another run \(the adapter's weights differ\)"):
        ordered_under(recipe)


def test_a_file_without_fingerprint_or_changed_since_is_refused_until_adopted(tmp_path, monkeypatch):
    monkeypatch.setattr(curriculum, "pass_rates", lambda *a, **k: pytest.fail("a matching file is not resampled"))
    recipe = stale_recipe(tmp_path)
    path = build_file_for(recipe, [Scored("What is 10 minus 3?", "7", 0.5, "data")])
    with path.open("a") as f:  # edited by hand after it was written
        f.write(json.dumps({"prompt": "What is 6 times 7?", "answer": "42", "pass_rate": 0.25, "source": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"changed after its fingerprint"):
        ordered_under(recipe)
    curriculum.meta_path(path).unlink()  # a file from before fingerprints
    with pytest.raises(ValueError, match=r"has no fingerprint .*delete it.* --samples 2 --adopt"):
        ordered_under(recipe)
    recipe_file = tmp_path / "recipe.yaml"
    curriculum.main(["--config", str(recipe_file), "--out", str(path), "--adopt"])  # the recipe's 2 samples
    assert ordered_under(recipe) == ["What is 10 minus 3?", "What is 6 times 7?"]
