"""Reward functions on hand-written cases (TRL's signature, the fields our rollout function adds)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from delegate.training.rewards import (
    FORMAT_PENALTIES,
    WeightSchedule,
    answers_match,
    correctness,
    format,
    format_violations,
    scheduled_rewards,
    tool_use,
)

MATCH = [  # (reference, predicted, equal)
    ("42", "42", True),
    ("1234567890", "1234567890", True),
    ("1234567890", "1234567891", False),  # a 10-digit answer off by one
    ("121932631112635269", "121932631112635269", True),
    ("121932631112635269", "121932631112635270", False),
    ("1,234,567", "1234567", True),
    ("1234567", "1,234,567", True),
    ("0.1234567891", "0.1234567891", True),
    ("0.1234567891", "0.1234567892", False),  # decimals are exact too, not rounded to 6 places
    ("12.5", "12.50", True),
    ("-7", "-7", True),
    ("-7", "7", False),
    ("\\frac{1}{2}", "0.5", True),  # fraction vs decimal
    ("1/2", "\\frac{1}{2}", True),
    ("\\frac{7}{2}", "3.5", True),
    ("\\frac{1}{3}", "0.33", False),
    ("3.5", "\\frac{7}{2}", True),
    ("\\sqrt{2}", "\\sqrt{2}", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("x^2 + 1", "1 + x^2", True),
    ("10\\%", "10\\%", True),
    ("5", "", False),
    ("5", "five", False),
    ("5", None, False),
]


@pytest.mark.parametrize("reference, predicted, equal", MATCH)
def test_answers_match(reference, predicted, equal):
    assert answers_match(reference, predicted) is equal


CORRECTNESS = [  # (completion text, reference, reward)
    ("So the answer is \\boxed{42}.", "42", 1.0),
    ("So the answer is \\boxed{43}.", "42", 0.0),
    ("The answer is 42.", "42", 0.0),  # unboxed
    ("First \\boxed{41}, no wait, \\boxed{42}", "42", 1.0),  # two boxes: the last counts
    ("First \\boxed{42}, no wait, \\boxed{41}", "42", 0.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{1234567891}", "1234567890", 0.0),
    ("\\boxed{42", "42", 0.0),  # unclosed box
    ("<result>\n42\n</result>", "42", 0.0),  # a result is not an answer
]


@pytest.mark.parametrize("text, reference, reward", CORRECTNESS)
def test_correctness_reads_the_last_box_of_the_completion(text, reference, reward):
    assert correctness([None], [text], answer=[reference]) == [reward]


def test_correctness_prefers_the_rollouts_own_answer():
    # The rollout function passes the box of the planner's own text, not of inserted results.
    assert correctness([None], ["<result>\\boxed{42}</result>"], answer=["42"], predicted=[None]) == [0.0]
    assert correctness([None, None], ["x", "y"], answer=["7", "8"], predicted=["7", "9"]) == [1.0, 0.0]


def test_correctness_reads_conversational_completions():
    completion = [{"role": "assistant", "content": "It is \\boxed{12}."}]
    assert correctness([None], [completion], answer=["12"]) == [1.0]


FORMAT = [  # (text, engine-seen violations, tags, reward, named problems)
    ("<request>6 times 7</request><result>\n42\n</result>\nSo \\boxed{42}", [], False, 1.0, []),
    ("no answer here", [], False, 0.5, ["no_answer"]),
    ("\\boxed{1} \\boxed{2}", [], False, 0.9, ["several_answers"]),
    ("<request>6 times", ["unclosed_call"], False, 0.2, ["unclosed_call", "no_answer"]),
    ("<result>42</result> \\boxed{42}", ["planner_wrote_result"], False, 0.0, ["planner_wrote_result"]),
    ("\\boxed{1}", ["nested_open"], False, 0.8, ["nested_open"]),
    ("\\boxed{1}", ["empty_call", "empty_call"], False, 0.8, ["empty_call"]),  # named once
    ("\\boxed{1}", ["invalid_json"], False, 0.8, ["invalid_json"]),
    ("\\boxed{1}", ["over_tool_limit"], False, 0.8, ["over_tool_limit"]),
    ("<think>plan</think> \\boxed{1}", [], True, 1.0, []),
    ("\\boxed{1}", [], True, 0.8, ["missing_think_tags"]),
    ("<think>a</think><answer>\\boxed{1}", [], True, 0.8, ["unclosed_answer_tag"]),
]


@pytest.mark.parametrize("text, seen, tags, reward, problems", FORMAT)
def test_format_is_graded_and_names_the_problems(text, seen, tags, reward, problems):
    assert format_violations(text, seen, tags) == problems
    assert format([None], [text], violations=[seen], tags=tags) == [pytest.approx(reward)]


def call(status: str, stdout: str | None = None) -> dict:
    """A call record as the rollout function passes it; a program that ran prints something unless told."""
    out = stdout if stdout is not None else ("42\n" if status == "ok" else "")
    return {"request": "r", "code": "c", "result": {"status": status, "stdout": out}, "cached": False}


TOOL_USE = [  # (statuses of the calls, reward)
    ([], 0.0),
    (["ok"], 0.1),
    (["ok", "ok"], 0.2),
    (["ok"] * 10, 0.3),  # capped
    (["error"], -0.1),
    (["ok", "timeout"], 0.0),
    (["crashed"] * 10, -0.3),  # capped below too
]


@pytest.mark.parametrize("statuses, reward", TOOL_USE)
def test_tool_use_bonus_penalty_and_cap(statuses, reward):
    assert tool_use([None], ["x"], tool_calls=[[call(s) for s in statuses]]) == [pytest.approx(reward)]


def test_a_call_that_prints_nothing_is_unpaid_and_penalised():
    """The planner got nothing back: no bonus, and the penalty of a failed call."""
    silent, blank = call("ok", stdout=""), call("ok", stdout=" \n")
    assert tool_use([None], ["x"], tool_calls=[[silent]]) == [pytest.approx(-0.1)]
    assert tool_use([None], ["x"], tool_calls=[[call("ok"), blank]]) == [pytest.approx(0.0)]
    assert tool_use([None], ["x"], tool_calls=[[{"result": {"status": "ok"}}]]) == [pytest.approx(-0.1)]


def test_tool_use_options():
    assert tool_use([None], ["x"], tool_calls=[[call("ok")] * 3], bonus=0.5, cap=1.0) == [pytest.approx(1.0)]


def test_weight_schedule_follows_the_step():
    schedule = WeightSchedule([(0, {"format": 2.0, "tool_use": 2.0, "correctness": 1.0}),
                               (256, {"format": 1.0, "tool_use": 1.0, "correctness": 2.0})])
    funcs = {f.__name__: f for f in scheduled_rewards(schedule)}
    assert set(funcs) == {"format", "tool_use", "correctness"}
    kwargs = {"answer": ["42"], "tool_calls": [[call("ok")]], "violations": [[]]}
    early = {n: f([None], ["\\boxed{42}"], trainer_state=SimpleNamespace(global_step=10), **kwargs)
             for n, f in funcs.items()}
    late = {n: f([None], ["\\boxed{42}"], trainer_state=SimpleNamespace(global_step=256), **kwargs)
            for n, f in funcs.items()}
    assert early == {"format": [2.0], "tool_use": [pytest.approx(0.2)], "correctness": [1.0]}
    assert late == {"format": [1.0], "tool_use": [pytest.approx(0.1)], "correctness": [2.0]}


def test_schedule_errors_are_clear():
    with pytest.raises(ValueError, match="starting at 0"):
        WeightSchedule([(5, {"format": 1.0})])
    with pytest.raises(ValueError, match="unknown reward 'speed'"):
        scheduled_rewards(WeightSchedule([(0, {"speed": 1.0})]))


def test_an_unsorted_schedule_is_refused():
    with pytest.raises(ValueError, match="sorted by step"):
        WeightSchedule([(0, {"correctness": 1.0}), (300, {"correctness": 2.0}), (100, {"correctness": 3.0})])


def test_a_reward_missing_from_a_later_stage_weighs_0_there():
    """A stage lists every weight it uses: one it leaves out is 0 from then on, not carried over from before."""
    schedule = WeightSchedule([(0, {"format": 1.0, "correctness": 1.0}), (10, {"correctness": 1.0})])
    funcs = {f.__name__: f for f in scheduled_rewards(schedule)}

    def format_at(step: int) -> list[float]:
        return funcs["format"]([None], ["no answer here"], trainer_state=SimpleNamespace(global_step=step),
                               violations=[[]])

    assert set(funcs) == {"format", "correctness"}
    assert format_at(9) == [0.5] and format_at(10) == [0.0] and format_at(1000) == [0.0]
    assert schedule.weights_at(10) == {"correctness": 1.0}


@pytest.mark.parametrize("seen", [["planner_wrote_result", "unclosed_call"],
                                  ["unclosed_call", "nested_open", "empty_call", "call_too_long"]])
def test_format_is_floored_at_0(seen):
    """Penalties that add up past 1 (here with `no_answer`, 1.8 and 1.4) give 0, never a negative score, weighted
    or not."""
    text = "<request>6 times"
    assert sum(FORMAT_PENALTIES[p] for p in format_violations(text, seen)) > 1.0
    assert format([None], [text], violations=[seen]) == [0.0]
    (weighted,) = scheduled_rewards(WeightSchedule([(0, {"format": 2.0})]))
    assert weighted([None], [text], violations=[seen]) == [0.0]


def test_every_violation_has_one_format_weight():
    from delegate.planner.protocols import VIOLATIONS
    from delegate.training.rewards import FORMAT_PENALTIES, TEXT_VIOLATIONS

    assert set(FORMAT_PENALTIES) == {*VIOLATIONS, *TEXT_VIOLATIONS}


def test_format_penalties_can_be_repriced_and_wrong_options_are_refused():
    fence = ["```python\nprint(1)\n```\nSo \\boxed{1}"]
    assert format([None], fence, violations=[["unparsed_call"]]) == [pytest.approx(0.8)]
    assert format([None], fence, violations=[["unparsed_call"]], penalties={"unparsed_call": 0.0}) == [1.0]
    schedule = WeightSchedule([(0, {"format": 1.0, "tool_use": 1.0})])
    (repriced, _) = scheduled_rewards(schedule, {"format": {"penalties": {"unparsed_call": 0.0}}})
    assert repriced([None], fence, violations=[["unparsed_call"]]) == [1.0]
    with pytest.raises(ValueError, match="unknown violation 'unparsed_cal'"):
        scheduled_rewards(schedule, {"format": {"penalties": {"unparsed_cal": 0.0}}})
    with pytest.raises(ValueError, match=r"rewards.options.tool_use.bonuss: not an option of tool_use"):
        scheduled_rewards(schedule, {"tool_use": {"bonuss": 0.2}})
    with pytest.raises(ValueError, match=r"rewards.options.correctness: no such reward in the schedule"):
        scheduled_rewards(schedule, {"correctness": {}})


def test_format_grades_the_planner_text_when_given():
    """A program that prints `\\boxed{7}` is the environment's text: it is no second answer of the planner's, and
    no answer at all when the planner wrote none."""
    code = "```python\nprint(chr(92) + 'boxed{7}')\n```\n"
    inserted = "```output\n\\boxed{7}\n```\n"
    answered, silent = code + inserted + "So \\boxed{42}", code + inserted
    assert format([None, None], [answered, silent]) == [pytest.approx(0.9), 1.0]  # the completion: fooled
    assert format([None, None], [answered, silent], planner_text=[code + "So \\boxed{42}", code]) == [1.0, 0.5]


@pytest.fixture(scope="module")
def code_rollout(tiny_model_dir):
    """A training `PlannerRollout` on the tiny model in code mode, a real sandbox, and the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from delegate.executor import Sandbox, SandboxConfig
    from delegate.planner import build_protocol
    from delegate.planner.config import PlannerConfig
    from delegate.training.rollout import PlannerRollout

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    planner = PlannerConfig(model=str(tiny_model_dir), protocol="code", temperature=1.0, max_completion_tokens=96)
    protocol = build_protocol("code", None, 200, tokenizer)
    with Sandbox(SandboxConfig(timeout_s=5.0, workers=2)) as sandbox:
        processors: list = []
        yield PlannerRollout(planner, protocol, tokenizer, sandbox, None, processors), processors, model


def test_a_box_printed_by_a_tool_is_never_the_planners(code_rollout):
    """End to end: the program prints `\\boxed{7}`; the engine's answer, `to_trl`'s `planner_text` and the format
    and correctness rewards read only what the planner sampled."""
    from delegate.planner import RolloutEngine
    from delegate.planner.trajectory import last_boxed
    from delegate.training.rollout import to_trl
    from tests.scripted import Env, Say, ScriptedText

    rollout, processors, model = code_rollout
    tokenizer = rollout.tokenizer
    program = "```python\nprint(chr(92) + 'boxed{7}')\n```\n"
    scripts = {"Answer after the tool?": [Say(program), Env("\n```\n"), Say("So \\boxed{42}")],
               "Stop after the tool?": [Say(program), Env("\n```\n")]}  # then EOS: no answer of its own
    probe = RolloutEngine(rollout.protocol, None, tokenizer, rollout.sandbox)
    forcer = ScriptedText(tokenizer, {tuple(probe.prompt_ids(rollout.system_prompt, q)): parts
                                      for q, parts in scripts.items()})
    processors[:] = [forcer]
    answered, silent = rollout.run(model, list(scripts))
    assert [t.tool_calls[0].result.stdout for t in (answered, silent)] == ["\\boxed{7}\n"] * 2
    assert last_boxed(silent.text) == "7"  # the whole completion holds the tool's box
    assert (answered.answer, silent.answer) == ("42", None)  # the engine's answer: the planner's own box only

    out = to_trl([answered, silent], [tokenizer.eos_token_id], tokenizer.pad_token_id, tokenizer)
    assert out["planner_text"] == [program + "So \\boxed{42}", program + tokenizer.eos_token]
    texts = [t.text for t in (answered, silent)]
    fields = {key: out[key] for key in ("predicted", "violations", "planner_text", "tool_calls")}
    assert format([None, None], texts, **fields) == [1.0, 0.5]
    assert format([None, None], texts, violations=out["violations"]) == [pytest.approx(0.9), 1.0]  # no planner_text
    assert correctness([None, None], texts, answer=["7", "7"], **fields) == [0.0, 0.0]
    assert tool_use([None, None], texts, **fields) == [pytest.approx(0.1)] * 2


def test_negative_weights_and_penalties_are_refused():
    # the sign-reversal bounds take weights and penalties as 0 or more; a negative one would slip past them
    with pytest.raises(ValueError, match=r"tool_use weighs -2\.0 from step 0: weights are 0 or more"):
        WeightSchedule([(0, {"correctness": 1.0, "tool_use": -2.0})])
    with pytest.raises(ValueError, match="repeated_call costs -1"):
        format([None], ["\\boxed{1}"], penalties={"repeated_call": -1})


def test_each_weighted_reward_says_its_weight_at_a_step():
    # the trainer reads it to log sign reversals only where correctness weighs something
    funcs = scheduled_rewards(WeightSchedule([(0, {"correctness": 0.0, "format": 1.0}), (5, {"correctness": 1.0})]))
    weights = {f.__name__: f.weight_at for f in funcs}
    assert [weights["correctness"](s) for s in (0, 5)] == [0.0, 1.0]
    assert [weights["format"](s) for s in (0, 5)] == [1.0, 0.0]
