"""`python -m delegate.training.evaluate` end to end on the tiny agent (a scripted planner), `--no-tools`,
`--compare`."""

from __future__ import annotations

import json

import pytest
import yaml
from transformers import LogitsProcessor

from delegate.planner import Agent, AgentConfig
from delegate.planner.protocols import CODE_TAGS
from delegate.training import evaluate, stats
from delegate.training.records import read_records
from tests.scripted import Env, Say, ScriptedText

PROBLEMS = [  # question, reference, source, the planner's script
    ("What is 6 times 7?", "42", "easy", [Say("<code>\nprint(6 * 7)\n</code>"), Env("</result>\n"),
                                         Say("\\boxed{42}")]),
    ("What is 2 plus 2?", "4", "easy", [Say("\\boxed{5}")]),
    ("What is 10 over 0?", "10", "hard", [Say("<code>\nprint(10 / 0)\n</code>"), Env("</result>\n"),
                                        Say("\\boxed{0}")]),
    ("What is 10 minus 3?", "7", "hard", [Say("I do not know.")]),
]


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "planner": {"model": str(tiny_model_dir), "device": "cpu", "protocol": "code", "max_completion_tokens": 64,
                    "markers": CODE_TAGS.model_dump()},  # the forcer below writes `<code>` token by token
        "coder": {"model": str(tiny_model_dir), "device": "cpu"},
        "executor": {"timeout_s": 5.0, "workers": 2}}))
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": a, "source": s}) + "\n" for q, a, s, _ in PROBLEMS))
    with Agent(AgentConfig.from_yaml(recipe)) as probe:
        scripts = {tuple(probe.engine.prompt_ids(probe.system_prompt, q)): script for q, _, _, script in PROBLEMS}
        tokenizer = probe.tokenizer
    return recipe, data, tokenizer, scripts


def test_evaluation_writes_trajectories_metrics_and_report_that_agree(tmp_path, setup):
    recipe, data, tokenizer, scripts = setup
    out = evaluate.main(["--config", str(recipe), "--data", str(data), "--out", str(tmp_path / "run"),
                         "--batch-size", "3"], logits_processors=[ScriptedText(tokenizer, scripts)])
    records = read_records(out / "trajectories.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["question"] for r in records] == [q for q, *_ in PROBLEMS]  # order kept across the two batches
    assert [r["correct"] for r in records] == [True, False, False, False]
    assert metrics["n"] == 4 and metrics["accuracy"] == 0.25
    assert metrics["accuracy_ci95"][0] < 0.25 < metrics["accuracy_ci95"][1]
    assert metrics["tool_call_rate"] == 0.5 and metrics["calls_per_answer"] == 0.5
    assert metrics["calls_histogram"] == {"0": 2, "1": 2}
    assert metrics["tool_outcomes"] == {"error": 0.5, "ok": 0.5} and metrics["tool_error_rate"] == 0.5
    assert metrics["format_violations"] == {"no_answer": 0.25} and metrics["answered_rate"] == 0.75
    assert metrics["by_source"]["easy"]["accuracy"] == 0.5 and metrics["by_source"]["hard"]["accuracy"] == 0.0
    assert metrics["mean_inserted_tokens"] == sum(len(r["env_mask"]) - sum(r["env_mask"]) for r in records) / 4 > 0
    assert metrics["seconds_per_problem"] > 0
    report = (out / "report.md").read_text()
    assert "| accuracy | 25.0% [" in report and "error 50.0%" in report
    assert (out / "accuracy_by_source.png").stat().st_size > 1000 and (out / "calls_per_answer.png").exists()


class WantsToCall(LogitsProcessor):
    """Pushes a tiny random model to write `<code>` over and over (its tokens: `<`, `code`, `>`)."""

    def __init__(self, tokenizer) -> None:
        self.lt, self.code, self.gt = tokenizer.encode("<code>", add_special_tokens=False)

    def __call__(self, input_ids, scores):
        for row, last in enumerate(input_ids[:, -1].tolist()):
            scores[row, {self.lt: self.code, self.code: self.gt}.get(last, self.lt)] += 50.0
        return scores


def test_no_tools_keeps_the_planner_from_calling(tmp_path, setup):
    recipe, _, tokenizer, _ = setup
    problems = [{"prompt": q, "answer": a, "source": s} for q, a, s, _ in PROBLEMS]
    with_tools = evaluate.evaluate(recipe, problems, tmp_path / "tools", logits_processors=[WantsToCall(tokenizer)])
    without = evaluate.evaluate(recipe, problems, tmp_path / "no-tools", no_tools=True,
                                logits_processors=[WantsToCall(tokenizer)])
    opened = [r["text"].count("<code>") for r in read_records(tmp_path / "tools" / "trajectories.jsonl")]
    assert all(count > 0 for count in opened) and with_tools["tools"]  # the pushed model opens calls
    texts = [r["text"] for r in read_records(tmp_path / "no-tools" / "trajectories.jsonl")]
    assert not any("<code>" in text for text in texts) and all("<code" in text for text in texts)  # `>` banned
    assert without["tool_call_rate"] == 0.0 and not without["tools"]

    comparison = evaluate.main(["--compare", str(tmp_path / "tools"), str(tmp_path / "no-tools"), "--out",
                                str(tmp_path / "cmp")])
    text = comparison.read_text()
    assert "| metric | tools | no-tools |" in text
    assert f"Accuracy of no-tools minus tools, paired over the same {len(problems)} problems: +0.0 points" in text
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["gained"] == 0
    assert (tmp_path / "cmp" / "comparison.png").exists()


def test_compare_names_a_directory_without_metrics(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError, match=r"metrics\.json not found"):
        evaluate.compare([tmp_path / "a", tmp_path / "a"], tmp_path / "out")


@pytest.mark.parametrize("successes, n", [(0, 10), (10, 10), (5, 10), (37, 200)])
def test_wilson_interval_holds_the_estimate_and_stays_in_bounds(successes, n):
    low, high = stats.wilson(successes, n)
    assert 0.0 <= low <= successes / n <= high <= 1.0 and high - low > 0


def test_wilson_interval_has_the_textbook_value():
    low, high = stats.wilson(37, 200)  # p = 0.185: Wilson's 95 % interval is [0.1373, 0.2449]
    assert low == pytest.approx(0.1373, abs=5e-4) and high == pytest.approx(0.2449, abs=5e-4)


def test_paired_comparison_finds_a_gain_an_unpaired_interval_would_blur():
    before = [True] * 30 + [False] * 70
    after = list(before)
    for i in range(30, 50):  # 20 problems gained
        after[i] = True
    after[0] = after[1] = False  # 2 lost
    result = stats.paired(before, after)
    assert result["delta"] == pytest.approx(0.18) and (result["gained"], result["lost"]) == (20, 2)
    assert result["mcnemar_p"] == pytest.approx(0.000121, rel=0.01)  # binomial: 2 or fewer of 22 at 1/2, twice
    low, high = result["ci95"]
    assert 0.0 < low < 0.18 < high
    unpaired = 1.96 * (0.3 * 0.7 / 100 + 0.48 * 0.52 / 100) ** 0.5
    assert high - low < 2 * unpaired * 0.75  # pairing removes the problems both runs share
    with pytest.raises(ValueError, match="same"):
        stats.paired(before, after[:-1])


def _fake_run(path, questions, correct):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"n": len(questions), "accuracy": sum(correct) / len(correct),
                                                   "by_source": {}, "tool_call_rate": 0.0}))
    (path / "trajectories.jsonl").write_text("".join(
        json.dumps({"question": q, "reference": "1", "correct": c, "tool_calls": []}) + "\n"
        for q, c in zip(questions, correct, strict=True)))


def test_compare_refuses_runs_over_different_problems(tmp_path):
    _fake_run(tmp_path / "a", ["q1", "q2"], [True, False])
    _fake_run(tmp_path / "b", ["q1", "q3"], [True, True])
    with pytest.raises(ValueError, match="different problems"):
        evaluate.compare([tmp_path / "a", tmp_path / "b"], tmp_path / "out")


def test_default_folder_names_the_agent():
    assert evaluate.agent_name("runs/qwen2.5-0.5b-request/agent.yaml") == "qwen2.5-0.5b-request"
    assert evaluate.agent_name("training/recipes/toy-request.yaml") == "toy-request"
