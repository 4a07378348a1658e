"""Sign reversals: whether one stage's weights let a wrong rollout out-score a right one (`rewards.reward_bounds`)."""

from __future__ import annotations

import pytest

from delegate.training.rewards import FORMAT_PENALTIES, reversal, reward_bounds, right_format_floor, tool_use_extremes

SEED_EARLY = {"correctness": 1.0, "format": 2.0, "tool_use": 2.0}  # the seed's first 256 steps
SEED_LATE = {"correctness": 2.0, "format": 1.0, "tool_use": 1.0}


def test_the_seeds_first_stage_reverses_the_sign():
    found = reversal(SEED_EARLY, {}, max_calls=4)
    assert found is not None
    # wrong: 0 + 2 * 1.0 + 2 * 0.3; right after 3 failed calls: 1 + 2 * 1.0 + 2 * (-0.3)
    assert (found.wrong, found.right) == (pytest.approx(2.6), pytest.approx(2.4))
    assert (found.clean_calls, found.failed_calls) == (3, 3)
    # and a right answer that also faked a tool result (planner_wrote_result): format 0
    assert (found.right_format, found.right_worst) == (0.0, pytest.approx(0.4))
    assert found.culprits == ("format", "tool_use")
    text = found.describe()
    assert "3 clean calls scores 2.60" in text and "3 failed calls (2.40)" in text
    assert text.endswith("format and tool_use can outweigh correctness")


@pytest.mark.parametrize("weights", [{"correctness": 1.0, "format": 0.1, "tool_use": 0.1}, SEED_LATE,
                                     {"correctness": 1.0, "format": 0.5, "tool_use": 0.5}])  # the recipe default
def test_correctness_dominant_stages_do_not_reverse(weights):
    assert reversal(weights, {}, max_calls=4) is None
    bounds = reward_bounds(weights, {}, max_calls=4)
    assert bounds is not None and bounds.wrong < bounds.right_worst


def test_format_alone_can_reverse_the_sign():
    """Without tool calls (tools off) only format is left: 2 * 1.0 for a clean wrong answer against 1 + 2 * 0.0
    for a right one that carries format problems, while both clean transcripts keep the right one ahead."""
    found = reversal(SEED_EARLY, {}, max_calls=0)
    assert found is not None and found.culprits == ("format",) and (found.clean_calls, found.failed_calls) == (0, 0)
    assert (found.wrong, found.right, found.right_worst) == (2.0, 3.0, 1.0)
    assert found.describe() == ("a wrong answer with a clean transcript scores 2.00, above a right answer whose "
                                "transcript scores 0.00 for format (1.00): format can outweigh correctness")


def test_the_bounds_follow_the_recipes_options():
    # a larger bonus and cap: 2 clean calls reach the cap of 1.0; the penalty still needs 10 failed calls
    (top, clean), (bottom, failed) = tool_use_extremes({"bonus": 0.5, "cap": 1.0})
    assert (top, clean, bottom, failed) == (1.0, 2, pytest.approx(-1.0), 10)
    # the tool-call limit caps the calls: 2 calls at most
    assert tool_use_extremes({}, max_calls=2) == ((pytest.approx(0.2), 2), (pytest.approx(-0.2), 2))
    # format penalties repriced to nothing: a right answer's transcript always scores 1, so format cannot reverse
    free = dict.fromkeys(FORMAT_PENALTIES, 0.0)
    assert reversal({"correctness": 1.0, "format": 5.0}, {"format": {"penalties": free}}) is None
    assert reversal({"correctness": 1.0, "format": 5.0}, {}) is not None


def test_a_right_answer_cannot_carry_no_answer_and_tags_count_only_when_graded():
    only = {name: 0.0 for name in FORMAT_PENALTIES}
    assert right_format_floor({"penalties": {**only, "no_answer": 0.9}}) == 1.0
    tags = {**only, "missing_think_tags": 0.2, "unclosed_answer_tag": 0.1}
    assert right_format_floor({"penalties": tags}) == 1.0
    assert right_format_floor({"penalties": tags, "tags": True}) == pytest.approx(0.7)
    assert right_format_floor({"penalties": {**only, "planner_wrote_result": 0.3, "empty_call": 0.2}}) == \
        pytest.approx(0.5)  # several problems add up
    assert right_format_floor() == 0.0  # the default table: faking a result alone costs the whole 1.0


def test_unknown_rewards_are_not_bounded():
    assert reward_bounds({"correctness": 1.0, "length": 1.0}) is None
