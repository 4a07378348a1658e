"""Reward functions with TRL's signature, `f(prompts, completions, **kwargs) -> list[float]`.

Each is a plain function; the recipe picks them by name, gives their options and weights, and may change the
weights with the training step (`WeightSchedule`). Besides TRL's arguments and the dataset's columns (`answer`, the
reference), they read the fields the rollout function adds: `predicted` (the planner's last `\\boxed{}`),
`planner_text` (the completion without the inserted tool results), `tool_calls`, `finish_reason` and `violations`.

`reward_bounds` and `reversal` say, from the rewards' own bounds, whether one stage's weights let a wrong rollout
out-score a right one (the recipe warns at load).
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
           tags: bool = False, penalties: dict[str, float] | None = None,
           planner_text: Sequence[str] | None = None, **kwargs: Any) -> list[float]:
    """1.0 for a clean transcript, less for each named problem (`FORMAT_PENALTIES`, with `penalties` replacing
    some of them), never below 0.

    It grades what the planner wrote: `planner_text` (from the rollout function: the completion without the
    inserted tool results) when given, else the completion, so that a program printing `\\boxed{7}` neither
    answers for the planner nor makes it give several answers.

    `penalties` is the recipe's lever on what format teaches first: pricing the ```python blocks the real 0.5B
    writes in request mode (`unparsed_call`) taught it to stop writing them, and with them its only delegating
    habit (docs/results.md); `rewards.options.format.penalties: {unparsed_call: 0.0}` leaves that habit unpriced."""
    table = FORMAT_PENALTIES | _checked_penalties(penalties)
    seen = violations if violations is not None else [()] * len(completions)
    texts = planner_text if planner_text is not None else [_text(c) for c in completions]
    scores = []
    for text, named in zip(texts, seen, strict=True):
        problems = format_violations(text, named, tags)
        scores.append(max(0.0, 1.0 - sum(table[p] for p in problems)))
    return scores


def _checked_penalties(penalties: dict[str, float] | None) -> dict[str, float]:
    unknown = sorted(set(penalties or {}) - set(FORMAT_PENALTIES))
    negative = sorted(name for name, cost in (penalties or {}).items() if cost < 0)
    if negative:  # a negative penalty would lift format above 1, past the bounds the reversal check assumes
        raise ValueError(f"rewards.options.format.penalties: {negative[0]} costs {penalties[negative[0]]}: a penalty "
                         "is 0 or more")
    if unknown:
        raise ValueError(f"rewards.options.format.penalties: unknown violation {unknown[0]!r}; known: "
                         f"{', '.join(FORMAT_PENALTIES)}")
    return dict(penalties or {})


def clean_call(call: dict[str, Any]) -> bool:
    """A call whose program ran without error and printed something (`call["result"]`: `ExecutionResult.to_dict`)."""
    result = call["result"]
    return result["status"] == "ok" and bool((result.get("stdout") or "").strip())


def tool_use(prompts: list[Any], completions: list[Any], tool_calls: Sequence[Sequence[dict[str, Any]]],
             bonus: float = 0.1, penalty: float = 0.1, cap: float = 0.3, **kwargs: Any) -> list[float]:
    """`bonus` per clean call (`clean_call`), minus `penalty` per other call, within [-cap, cap].

    A program that ran but printed nothing counts as failed: the planner got nothing back from it, so paying it, or
    letting it go free, would reward delegating for its own sake. The seed paid 0.1 per call with no cap, which
    rewards calling for its own sake too; the cap bounds that.
    """
    scores = []
    for calls in tool_calls:
        ok = sum(1 for call in calls if clean_call(call))
        score = bonus * ok - penalty * (len(calls) - ok)
        scores.append(max(-cap, min(cap, score)))
    return scores


REWARDS: dict[str, RewardFunc] = {"correctness": correctness, "format": format, "tool_use": tool_use}


@dataclass(frozen=True)
class RewardBounds:
    """Under one stage's weights: the best score a wrong rollout can get and the worst a right one can.

    `wrong`: a wrong answer with a clean transcript and `clean_calls` clean calls (tool_use at its top). `right`: a
    right answer with a clean transcript after `failed_calls` failed calls (tool_use at its bottom): against `wrong`
    it shows what tool use alone can do. `right_worst`: the same right answer whose transcript also carries every
    format problem a right answer can (format at `right_format`): the real lower bound."""

    wrong: float
    right: float
    right_worst: float
    right_format: float
    clean_calls: int
    failed_calls: int
    culprits: tuple[str, ...]  # the rewards whose range lets `wrong` reach above `right_worst`

    @property
    def reversed(self) -> bool:
        return self.wrong > self.right_worst

    def describe(self) -> str:
        """What outweighs what, in words and scores (meant for a reversed stage)."""
        clean = f" and {_calls(self.clean_calls, 'clean')}" if self.clean_calls else ""
        failed = f" after {_calls(self.failed_calls, 'failed')}" if self.failed_calls else ""
        text = f"a wrong answer with a clean transcript{clean} scores {self.wrong:.2f}, "
        if self.wrong > self.right:
            text += f"above a right answer{failed} ({self.right:.2f})"
            if self.right_worst < self.right:
                text += (f" and above one whose transcript also scores {self.right_format:.2f} for format "
                         f"({self.right_worst:.2f})")
        else:
            text += (f"above a right answer{failed} whose transcript scores {self.right_format:.2f} for format "
                     f"({self.right_worst:.2f})")
        return f"{text}: {' and '.join(self.culprits) or 'nothing'} can outweigh correctness"


def _calls(n: int, kind: str) -> str:
    return f"{n} {kind} call{'s' if n != 1 else ''}"


def right_format_floor(options: dict[str, Any] | None = None) -> float:
    """The lowest `format` score a rollout with a right answer can get: 1 minus every penalty it can carry.

    A right rollout has an answer, so `no_answer` cannot apply; any other problem can come with one (a planner that
    fakes a tool result and still boxes the right number carries `planner_wrote_result`, refused calls leave it free
    to answer), and the tag problems only with `tags`. Several can come together, so their penalties add up."""
    options = options or {}
    table = FORMAT_PENALTIES | _checked_penalties(options.get("penalties"))
    tag_problems = {"missing_think_tags", "unclosed_answer_tag"}
    carried = [name for name in table if name != "no_answer" and (options.get("tags") or name not in tag_problems)]
    return max(0.0, 1.0 - sum(table[name] for name in carried))


def tool_use_extremes(options: dict[str, Any] | None = None, max_calls: int | None = None
                      ) -> tuple[tuple[float, int], tuple[float, int]]:
    """`tool_use`'s (top, clean calls to reach it) and (bottom, failed calls to reach it), fewest calls first,
    computed by the function itself over 0 to `max_calls` calls (by default: enough to reach the cap)."""
    options = options or {}
    bonus, penalty, cap = (float(options.get(k, d)) for k, d in (("bonus", 0.1), ("penalty", 0.1), ("cap", 0.3)))
    steps = [abs(x) for x in (bonus, penalty) if x]
    enough = math.ceil(abs(cap) / min(steps) - 1e-9) if steps else 0
    limit = min(enough, 64) if max_calls is None else min(enough, max_calls)
    clean = {"result": {"status": "ok", "stdout": "1"}}
    failed = {"result": {"status": "error", "stdout": ""}}
    counts = range(limit + 1)
    tops = tool_use([None] * len(counts), [""] * len(counts), [[clean] * k for k in counts], **options)
    bottoms = tool_use([None] * len(counts), [""] * len(counts), [[failed] * k for k in counts], **options)
    top = max(tops)
    bottom = min(bottoms)
    return (top, tops.index(top)), (bottom, bottoms.index(bottom))


def reward_bounds(weights: dict[str, float], options: dict[str, dict[str, Any]] | None = None,
                  max_calls: int | None = None) -> RewardBounds | None:
    """`RewardBounds` of one stage's `weights` (taken as non-negative) with the recipe's reward `options`;
    `max_calls`: the most tool calls a rollout can make (`planner.max_tool_calls`, 0 without tools). None when
    the weights name a reward whose bounds are not known here."""
    if set(weights) - {"correctness", "format", "tool_use"}:
        return None
    options = options or {}
    w_correct, w_format, w_tools = (weights.get(name, 0.0) for name in ("correctness", "format", "tool_use"))
    (top, clean_calls), (bottom, failed_calls) = tool_use_extremes(options.get("tool_use"), max_calls)
    floor = right_format_floor(options.get("format"))
    wrong = w_format * 1.0 + w_tools * top
    right = w_correct + w_format * 1.0 + w_tools * bottom
    right_worst = w_correct + w_format * floor + w_tools * bottom
    culprits = tuple(name for name, spread in (("format", w_format * (1.0 - floor)),
                                                ("tool_use", w_tools * (top - bottom))) if spread > 0)
    return RewardBounds(wrong, right, right_worst, floor, clean_calls, failed_calls, culprits)


def reversal(weights: dict[str, float], options: dict[str, dict[str, Any]] | None = None,
             max_calls: int | None = None) -> RewardBounds | None:
    """The stage's `RewardBounds` when a wrong rollout can out-score a right one under `weights`, else None."""
    bounds = reward_bounds(weights, options, max_calls)
    return bounds if bounds is not None and bounds.reversed else None


class WeightSchedule:
    """Reward weights that change with the step: `[(from_step, {name: weight}), ...]`, the last entry whose
    `from_step` has been reached applies (the seed: format and tool use double for 256 steps, then accuracy)."""

    def __init__(self, stages: Sequence[tuple[int, dict[str, float]]]) -> None:
        if not stages or sorted(s for s, _ in stages) != [s for s, _ in stages] or stages[0][0] != 0:
            raise ValueError("a weight schedule is a list of (from_step, weights) sorted by step, starting at 0")
        negative = [(start, name, w) for start, weights in stages for name, w in weights.items() if w < 0]
        if negative:  # a negative weight turns a reward into a penalty the reversal bounds do not cover
            start, name, weight = negative[0]
            raise ValueError(f"rewards.schedule: {name} weighs {weight} from step {start}: weights are 0 or more "
                             "(price a behaviour by the reward's own options instead)")
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
        weighted.weight_at = lambda step, _name=name: schedule.weights_at(step).get(_name, 0.0)  # type: ignore
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
