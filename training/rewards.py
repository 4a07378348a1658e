"""Reward functions with TRL's signature, `f(prompts, completions, **kwargs) -> list[float]`.

Each is a plain function; the recipe picks them by name, gives their options and weights, and may change the
weights with the training step (`WeightSchedule`). Besides TRL's arguments and the dataset's columns (`answer`, the
reference), they read the fields the rollout function adds: `predicted` (the planner's last `\\boxed{}`),
`tool_calls`, `finish_reason` and `violations`.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from math_verify import parse, verify

from delegate.planner.trajectory import last_boxed

RewardFunc = Callable[..., list[float]]
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")

# What each named format problem costs (from a start of 1.0, floored at 0).
TEXT_VIOLATIONS = ("no_answer", "several_answers", "missing_think_tags", "unclosed_answer_tag")  # seen in the text
# One weight for every violation the engine names (`planner.protocols.VIOLATIONS`) and every one the text shows
# (`TEXT_VIOLATIONS`); tests/test_rewards.py checks that the names are the same.
FORMAT_PENALTIES = {
    "planner_wrote_result": 1.0,  # the worst: it ends the rollout and fakes a tool
    "no_answer": 0.5,
    "unclosed_call": 0.3,
    "unclosed_answer_tag": 0.2,
    "missing_think_tags": 0.2,
    "nested_open": 0.2,
    "empty_call": 0.2,
    "call_too_long": 0.2,
    "invalid_json": 0.2,
    "unknown_tool": 0.2,
    "bad_arguments": 0.2,
    "over_tool_limit": 0.2,
    "unparsed_call": 0.2,  # a call nothing runs: the planner believes it delegated
    "repeated_call": 0.1,
    "request_without_numbers": 0.1,
    "eos_after_result": 0.0,  # no_answer already costs it
    "several_answers": 0.1,
}


def _text(completion: Any) -> str:
    """A completion as text: TRL passes strings, or message lists for conversational data."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content") or "" for message in completion if isinstance(message, dict))


def answers_match(reference: str | None, predicted: str | None) -> bool:
    """True if `predicted` equals `reference` as mathematics: plain numerals exactly (a 10-digit answer off by
    one is wrong, and so is a decimal off in its tenth place), everything else through math-verify."""
    if reference is None or predicted is None or not predicted.strip():
        return False
    ref, pred = reference.strip(), predicted.strip()
    if _PLAIN_NUMBER.match(ref) and _PLAIN_NUMBER.match(pred):
        try:
            return Decimal(ref.replace(",", "")) == Decimal(pred.replace(",", ""))
        except InvalidOperation:
            return False
    return bool(verify(parse(f"${ref}$"), parse(f"${pred}$")))


def correctness(prompts: list[Any], completions: list[Any], answer: Sequence[str], predicted: Sequence[str | None]
                | None = None, **kwargs: Any) -> list[float]:
    """1.0 when the planner's last `\\boxed{}` equals the reference, else 0.0."""
    guesses = predicted if predicted is not None else [last_boxed(_text(c)) for c in completions]
    return [1.0 if answers_match(ref, guess) else 0.0 for ref, guess in zip(answer, guesses, strict=True)]


def format_violations(text: str, violations: Sequence[str] = (), tags: bool = False) -> list[str]:
    """The named format problems of one completion: those the engine saw while generating, and what the text
    shows (no final answer, several answers, the think/answer tags when `tags` is set)."""
    found = list(dict.fromkeys(violations))
    boxes = text.count("\\boxed{")
    if last_boxed(text) is None:
        found.append("no_answer")
    elif boxes > 1:
        found.append("several_answers")
    if tags:
        if not re.search(r"<think>.*?</think>", text, re.DOTALL):
            found.append("missing_think_tags")
        if "<answer>" in text and "</answer>" not in text:
            found.append("unclosed_answer_tag")
    return found


def format(prompts: list[Any], completions: list[Any], violations: Sequence[Sequence[str]] | None = None,
           tags: bool = False, penalties: dict[str, float] | None = None, **kwargs: Any) -> list[float]:
    """1.0 for a clean transcript, less for each named problem (`FORMAT_PENALTIES`, with `penalties` replacing
    some of them), never below 0.

    `penalties` is the recipe's lever on what format teaches first: the real 0.5B in request mode wrote ```python
    blocks in 44 % of its first rollouts (`unparsed_call`, 0.2, weighed 2 by the seed's schedule) and learned to
    stop writing them, and with them its only delegating habit (bench/results/gpu-real-grpo.md);
    `rewards.options.format.penalties: {unparsed_call: 0.0}` leaves that habit unpriced."""
    table = FORMAT_PENALTIES | _checked_penalties(penalties)
    seen = violations if violations is not None else [()] * len(completions)
    scores = []
    for completion, named in zip(completions, seen, strict=True):
        problems = format_violations(_text(completion), named, tags)
        scores.append(max(0.0, 1.0 - sum(table[p] for p in problems)))
    return scores


def _checked_penalties(penalties: dict[str, float] | None) -> dict[str, float]:
    unknown = sorted(set(penalties or {}) - set(FORMAT_PENALTIES))
    if unknown:
        raise ValueError(f"rewards.options.format.penalties: unknown violation {unknown[0]!r}; known: "
                         f"{', '.join(FORMAT_PENALTIES)}")
    return dict(penalties or {})


def tool_use(prompts: list[Any], completions: list[Any], tool_calls: Sequence[Sequence[dict[str, Any]]],
             bonus: float = 0.1, penalty: float = 0.1, cap: float = 0.3, **kwargs: Any) -> list[float]:
    """`bonus` per call whose program ran cleanly, minus `penalty` per failed call, within [-cap, cap].

    The seed paid 0.1 per call with no cap, which rewards calling for its own sake; the cap bounds that.
    """
    scores = []
    for calls in tool_calls:
        ok = sum(1 for call in calls if call["result"]["status"] == "ok")
        score = bonus * ok - penalty * (len(calls) - ok)
        scores.append(max(-cap, min(cap, score)))
    return scores


REWARDS: dict[str, RewardFunc] = {"correctness": correctness, "format": format, "tool_use": tool_use}


class WeightSchedule:
    """Reward weights that change with the step: `[(from_step, {name: weight}), ...]`, the last entry whose
    `from_step` has been reached applies (the seed: format and tool use double for 256 steps, then accuracy)."""

    def __init__(self, stages: Sequence[tuple[int, dict[str, float]]]) -> None:
        if not stages or sorted(s for s, _ in stages) != [s for s, _ in stages] or stages[0][0] != 0:
            raise ValueError("a weight schedule is a list of (from_step, weights) sorted by step, starting at 0")
        self.stages = list(stages)

    def weights_at(self, step: int) -> dict[str, float]:
        current = self.stages[0][1]
        for start, weights in self.stages:
            if step >= start:
                current = weights
        return current


def scheduled_rewards(schedule: WeightSchedule, options: dict[str, dict[str, Any]] | None = None) -> list[RewardFunc]:
    """One function per reward named in the schedule, already multiplied by its weight at the current step
    (read from the `trainer_state` TRL passes), so TRL's own `reward_weights` stay at 1."""
    names = list(dict.fromkeys(name for _, weights in schedule.stages for name in weights))
    unknown = [name for name in names if name not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward {unknown[0]!r}; known: {', '.join(REWARDS)}")
    _check_options(names, options or {})
    funcs = []
    for name in names:
        base = functools.partial(REWARDS[name], **(options or {}).get(name, {}))

        def weighted(prompts: list[Any], completions: list[Any], _base: Callable[..., list[float]] = base,
                     _name: str = name, **kwargs: Any) -> list[float]:
            state = kwargs.get("trainer_state")
            weight = schedule.weights_at(state.global_step if state is not None else 0).get(_name, 0.0)
            return [weight * score for score in _base(prompts, completions, **kwargs)]

        weighted.__name__ = name  # TRL logs each reward under its function's name
        funcs.append(weighted)
    return funcs


def _check_options(names: list[str], options: dict[str, dict[str, Any]]) -> None:
    """Each option names a keyword the reward function declares (a typo would otherwise vanish into its
    `**kwargs`), for a reward the schedule uses; `format`'s penalties name known violations."""
    for name, given in options.items():
        if name not in names:
            raise ValueError(f"rewards.options.{name}: no such reward in the schedule ({', '.join(names)})")
        declared = {p.name for p in inspect.signature(REWARDS[name]).parameters.values()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY or p.default is not inspect.Parameter.empty}
        for key in given:
            if key not in declared:
                raise ValueError(f"rewards.options.{name}.{key}: not an option of {name} (options: "
                                 f"{', '.join(sorted(declared))})")
    _checked_penalties(options.get("format", {}).get("penalties"))
