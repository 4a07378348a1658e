"""`python -m delegate.training.evaluate` end to end on the tiny agent (a scripted planner), `--no-tools`,
`--compare`."""

from __future__ import annotations

import json

import pytest
import yaml
from transformers import LogitsProcessor

from delegate.planner import Agent, AgentConfig
from delegate.planner.protocols import CODE_TAGS
from delegate.training import evaluate, stats, view
from delegate.training.records import read_records
from tests import test_view
from tests.scripted import Env, Say, ScriptedText

browser = test_view.browser  # the viewer's headless Chromium fixture

PROBLEMS = [  # question, reference, source, the planner's script
    ("What is 6 times 7?", "42", "easy", [Say("<code>\nprint(6 * 7)\n</code>"), Env("</result>\n"),
                                         Say("\\boxed{42}")]),
    ("What is 2 plus 2?", "4", "easy", [Say("\\boxed{5}")]),
    ("What is 10 over 0?", "10", "hard", [Say("<code>\nprint(10 / 0)\n</code>"), Env("</result>\n"),
                                        Say("\\boxed{0}")]),
    ("What is 10 minus 3?", "7", "hard", [Say("I do not know.")]),
]


def write_recipe(recipe, tiny_model_dir):
    recipe.write_text(yaml.safe_dump({
        "planner": {"model": str(tiny_model_dir), "device": "cpu", "protocol": "code", "max_completion_tokens": 64,
                    "markers": CODE_TAGS.model_dump()},  # the forcer below writes `<code>` token by token
        "coder": {"model": str(tiny_model_dir), "device": "cpu"},
        "executor": {"timeout_s": 5.0, "workers": 2}}))
    return recipe


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir)
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


def test_a_paired_comparison_where_every_problem_moved_alike_has_a_point_interval():
    """Every problem gained (or none changed): the differences have no spread, and the bootstrap's interval would
    be NaN; it is the difference itself."""
    for before, after, delta in (([False] * 4, [True] * 4, 1.0), ([True, False], [True, False], 0.0)):
        result = stats.paired(before, after)
        assert result["delta"] == delta and result["ci95"] == [delta, delta]


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


# --- behaviour metrics and the generated suites, on trajectories the real engine builds ------------------------

LONG = ["--set", "planner.max_completion_tokens=256"]  # room for two calls and their tracebacks


def _scripted(recipe, pairs):
    """A forcer for (question, script) pairs, keyed by the questions' real prompt ids."""
    with Agent(AgentConfig.from_yaml(recipe, LONG[1:])) as probe:
        scripts = {tuple(probe.engine.prompt_ids(probe.system_prompt, q)): script for q, script in pairs}
        return ScriptedText(probe.tokenizer, scripts)


def _call(program: str) -> list:
    return [Say(f"<code>\n{program}\n</code>"), Env("</result>\n")]


BEHAVING = [  # question, reference, source, script
    ("What is 6 times 7?", "42", "recover", _call("print(6 / 0)") + _call("print(6 * 7)") + [Say("\\boxed{42}")]),
    ("What is 5 times 5?", "25", "recover", _call("print(5 / 0)") + _call("print(5 / 0)") + [Say("\\boxed{10}")]),
    ("What is 8 times 9?", "72", "verify", [Say("8 times 9 is 72. Check: "), *_call("print(8 * 9 == 72)"),
                                           Say("\\boxed{72}")]),
    ("What is 3 plus 4?", "7", "verify", [*_call("print(3 + 4)"), Say("\\boxed{7}")]),
    ("What is the least factor of 91 above 1?", "7", "verify",
     [*_call("for k in range(2, 91):\n    if 91 % k == 0:\n        print(k)\n        break"), Say("\\boxed{7}")]),
]


def test_the_progress_bar_moves_per_finished_problem_not_per_batch(tmp_path, setup, monkeypatch):
    """Issue 43: the bar sat at 0/20 for minutes, then jumped to 20/20 (one update per batch of 128). One batch of
    four problems that finish in two rounds: four steps of one."""
    import tqdm.auto

    recipe, data, tokenizer, scripts = setup
    steps: list[int] = []

    class CountingBar(tqdm.auto.tqdm):
        def update(self, n=1):
            if self.desc == "evaluate":  # not a bar of the libraries' (weights loading)
                steps.append(n)
            return super().update(n)

    monkeypatch.setattr(tqdm.auto, "tqdm", CountingBar)
    evaluate.main(["--config", str(recipe), "--data", str(data), "--out", str(tmp_path / "run"), "--batch-size",
                   "4"], logits_processors=[ScriptedText(tokenizer, scripts)])
    assert steps == [1, 1, 1, 1]


@pytest.fixture(scope="module")
def behaving_run(tmp_path_factory, tiny_model_dir):
    """An evaluation of the `BEHAVING` scripts (one run shared by the tests that read it)."""
    tmp_path = tmp_path_factory.mktemp("behaving")
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir)
    data = tmp_path / "behaving.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": a, "source": s}) + "\n" for q, a, s, _ in BEHAVING))
    forcer = _scripted(recipe, [(q, script) for q, _, _, script in BEHAVING])
    return evaluate.main(["--config", str(recipe), "--data", str(data), "--out", str(tmp_path / "run"), *LONG],
                         logits_processors=[forcer])


def test_behaviour_metrics_count_recovery_and_verification(behaving_run):
    out = behaving_run
    records = read_records(out / "trajectories.jsonl")
    assert [len(r["tool_calls"]) for r in records] == [2, 2, 1, 1, 1]  # the engine ran every scripted call
    assert [r["tool_calls"][0]["result"]["status"] for r in records] == ["error", "error", "ok", "ok", "ok"]
    flags = [r["behaviour"] for r in records]
    assert [f["failed_call"] for f in flags] == [True, True, False, False, False]
    assert [f["recovered"] for f in flags] == [True, False, False, False, False]
    assert [(f["retried_changed"], f["retried_same"]) for f in flags[:2]] == [(True, False), (False, True)]
    assert [(f["after_answer"], f["checks_candidate"]) for f in flags[2:]] == [(1, 1), (0, 0), (0, 0)]
    behaviour = json.loads((out / "metrics.json").read_text())["behaviour"]
    assert behaviour["rollouts_with_failed_call"] == 2 and behaviour["recovered_rate"] == 0.5
    assert behaviour["retried_changed_rate"] == 0.5 and behaviour["retried_same_rate"] == 0.5
    assert behaviour["verification_calls"] == 1 and behaviour["verification_share"] == pytest.approx(1 / 7)
    assert behaviour["verifying_rollout_rate"] == pytest.approx(1 / 5)
    by_source = json.loads((out / "metrics.json").read_text())["by_source"]
    assert by_source["recover"]["calls_per_answer"] == 2.0 and by_source["verify"]["calls_per_answer"] == 1.0
    assert by_source["recover"]["failed_call_rate"] == 1.0 and by_source["verify"]["tool_call_rate"] == 1.0
    report = (out / "report.md").read_text()
    assert "Of the 2 rollouts with a failed call" in report and "| right after a failed call | 50.0% of 2 |" in report


def test_a_suite_evaluation_grades_by_the_suite_checker(tmp_path, setup):
    from delegate.training import suites

    recipe = setup[0]
    rows = suites.rows("unseen:countdown,knights", "test", limit=3)
    countdown = suites.generate("countdown", "test", 2)
    target = countdown[1].answer.split()[0]
    knights = suites.suite_checks.knights_reference(rows[1]["answer"])
    said = " and ".join(f"{name} is a {'knight' if role else 'knave'}" for name, role in knights.items())
    answers = [countdown[0].solution, said, target]  # right, right in other words, wrong (the target is not given)
    forcer = _scripted(recipe, [(r["prompt"], [Say(f"\\boxed{{{a}}}")]) for r, a in zip(rows, answers, strict=True)])
    out = evaluate.main(["--config", str(recipe), "--data", "unseen:countdown,knights", "--limit", "3", "--out",
                         str(tmp_path / "suite"), *LONG], logits_processors=[forcer])
    records = read_records(out / "trajectories.jsonl")
    assert [r["source"] for r in records] == ["unseen/countdown", "unseen/knights", "unseen/countdown"]
    assert [r["reference"] for r in records] == [r["answer"] for r in rows]
    assert [r["correct"] for r in records] == [True, True, False]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["by_source"]["unseen/countdown"]["accuracy"] == 0.5
    assert metrics["by_source"]["unseen/knights"]["accuracy"] == 1.0
    assert "| unseen/knights | 1 | 100.0% [" in (out / "report.md").read_text()


def test_the_viewer_filters_an_evaluation_by_behaviour(tmp_path, behaving_run, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = view.main([str(behaving_run / "trajectories.jsonl"), "-o", str(tmp_path / "report.html")])
    browser.get(page.resolve().as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []
    choose = Select(browser.find_element(By.ID, "filter-behaviour"))
    shown = {}
    for value in ("failed_call", "recovered", "retried_changed", "verification", ""):
        choose.select_by_value(value)
        shown[value] = [i.find_element(By.CSS_SELECTOR, ".question").text
                        for i in browser.find_elements(By.CSS_SELECTOR, "article.item") if i.is_displayed()]
    questions = [q for q, *_ in BEHAVING]
    assert shown == {"failed_call": questions[:2], "recovered": questions[:1], "retried_changed": questions[:1],
                     "verification": questions[2:3], "": questions}


@pytest.mark.parametrize("code, checks", [
    ("assert 6 * 7 == 42", True), ("print(6 * 7 == 42)", True), ("x = 181\nprint(25 * 7 + 6 != x)", False),
    ("if 25 * 7 + 6 == 181:\n    print('yes')", True), ("print(6 * 7)", False),
    ("for k in range(2, 91):\n    if 91 % k == 0:\n        print(k)", False),  # a search, not a check
    ("print([n for n in range(99) if n * n == 49])", False), ("print(x == 0)", False), ("def f(:", False)])
def test_a_checking_program_compares_against_a_candidate_outside_loops(code, checks):
    from delegate.training.behaviour import checks_candidate

    assert checks_candidate(code) is checks


def test_a_stated_answer_is_a_box_an_answer_phrase_or_the_final_answer_not_taken_from_the_question():
    from delegate.training.behaviour import states_answer

    assert states_answer("So the answer is 12. Let me check.", None)
    assert states_answer("It should be 4620.", "4620", "What is 66 times 70?")
    assert not states_answer("66 times 70, let me compute.", "66", "What is 66 times 1?")  # a given restated
    assert not states_answer("about 46200", "4620", "What is 66 times 70?")
