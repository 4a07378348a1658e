"""Answer extraction and the Trajectory record's round trip."""

from __future__ import annotations

import pytest

from delegate.executor import ExecutionResult
from delegate.planner.trajectory import ToolCall, Trajectory, boxed_end, last_boxed


@pytest.mark.parametrize("text, answer", [
    ("so \\boxed{42}.", "42"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{ 7 }", "7"),
    ("\\boxed{3} and an unclosed \\boxed{4", "3"),
    ("\\boxed{unclosed", None),
    ("no box at all", None),
])
def test_last_boxed(text, answer):
    assert last_boxed(text) == answer


def test_boxed_end_is_just_past_the_first_complete_box():
    text = "x \\boxed{12} y \\boxed{3}"
    assert text[: boxed_end(text)] == "x \\boxed{12}"
    assert boxed_end("\\boxed{1") is None


def test_trajectory_round_trips_through_a_dict():
    call = ToolCall(request="6 times 7", code="print(42)", result=ExecutionResult(status="ok", stdout="42\n"),
                    cached=True)
    trajectory = Trajectory(question="q", prompt_ids=[1, 2], completion_ids=[3, 4, 5], logprobs=[-0.5, 0.0, -1.0],
                            env_mask=[1, 0, 1], text="abc", tool_calls=[call], finish_reason="answer", answer="42")
    assert Trajectory.from_dict(trajectory.to_dict()) == trajectory
    assert trajectory.inserted_tokens == 1
