"""How an agent behaves around its tool calls, from trajectory records: recovery, verification, calls per task type.

The seed claims, by example only, that a trained planner changes course after a failed call and uses Python to check
an answer it already has. Evaluation measures both on every run (`metrics.json` key `behaviour`, the report, and
each record's `behaviour` flags, which the viewer filters on):
- a **failed call** is one that was refused, whose coder failed, or whose program did not run cleanly or printed
  nothing (the rewards' `clean_call`): the planner got no usable result from it;
- **recovery**: of the rollouts with a failed call, the share that still end right, and the share that call again
  after it with a changed request (the planner's words in request and chat mode, its program in code mode) against
  those that only repeat the same request or stop calling;
- a **verification call** comes after the planner has already stated an answer (a `\\boxed{}`, "the answer is",
  or its final answer written out) in its own text before the call, or runs a program that checks a candidate
  (an `assert`, or an `==`/`!=` against a literal other than 0 and 1 outside any loop: a search's `n % k == 0` is no
  check of an answer);
- **calls per task type**: the tool-call rate and calls per answer of each source (a suite is one task type).

Where a call sits in the text is read from the record's `segments`: the k-th inserted run is the k-th call's
result, so the planner's text before it is the sampled runs before that one, up to where the call's request begins.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from typing import Any

from delegate.training.rewards import clean_call

Record = dict[str, Any]
_STATED = re.compile(r"\\boxed\{|\b(?:final answer|the answer|answer)\s*(?:is|:|=)", re.I)


def failed(call: dict[str, Any]) -> bool:
    """The planner got no usable result: refused, a coder failure, or not a clean run with output."""
    return bool(call.get("error") or call.get("coder_failure")) or not clean_call(call)


def texts_before_calls(record: Record) -> list[str]:
    """The planner's own text before each call (the inserted results left out), one string per call."""
    calls = record["tool_calls"]
    runs = record.get("segments") or [{"text": record["text"], "trained": True}]
    before, written = [], ""
    for run in runs:
        if run["trained"]:
            written += run["text"]
        elif len(before) < len(calls):
            before.append(written)
    while len(before) < len(calls):  # a result cut by the token budget left no inserted run
        before.append(written)
    out = []
    for call, text in zip(calls, before, strict=True):
        where = text.rfind(call["request"]) if call["request"] else -1
        out.append(text[:where] if where >= 0 else text)
    return out


def _standalone(answer: str, text: str) -> bool:
    return bool(re.search(rf"(?<![\w.]){re.escape(answer)}(?![\w]|\.\d)", text))


def states_answer(text: str, answer: str | None, question: str = "") -> bool:
    """The planner's `text` already states an answer: a box, an answer phrase, or the final `answer` itself (one
    not already in the `question`, where restating a given would pass for it)."""
    if _STATED.search(text):
        return True
    return bool(answer) and _standalone(answer, text) and not _standalone(answer, question)


def _checks(node: ast.AST, in_loop: bool = False) -> bool:
    loop = isinstance(node, (ast.For, ast.While, ast.comprehension, ast.ListComp, ast.SetComp, ast.GeneratorExp,
                             ast.DictComp, ast.FunctionDef, ast.Lambda))
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, ast.Compare) and not in_loop and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
        sides = [node.left, *node.comparators]
        literals = [s for s in sides if isinstance(s, ast.Constant) and s.value not in (0, 1, None, "")]
        if literals and len(literals) < len(sides):
            return True
    return any(_checks(child, in_loop or loop) for child in ast.iter_child_nodes(node))


def checks_candidate(code: str) -> bool:
    """The program checks a candidate answer: an `assert`, or an equality test against a literal outside loops."""
    try:
        return _checks(ast.parse(code))
    except SyntaxError:
        return False


def _changed(a: str, b: str) -> bool:
    return " ".join(a.split()) != " ".join(b.split())


def rollout_behaviour(record: Record) -> dict[str, Any]:
    """One rollout's flags: `failed_call`, `recovered` (a failed call, yet right), `retried_changed`,
    `retried_same` (a later call repeats a failed request and none changes it), `verification_calls`,
    `after_answer` and `checks_candidate` (calls of each kind)."""
    calls = record["tool_calls"]
    failures = [i for i, call in enumerate(calls) if failed(call)]
    later = [(i, j) for i in failures for j in range(i + 1, len(calls))]
    changed = any(_changed(calls[i]["request"], calls[j]["request"]) for i, j in later)
    befores = texts_before_calls(record)
    after = [states_answer(text, record.get("answer"), record.get("question", "")) for text in befores]
    checking = [checks_candidate(call.get("code") or "") for call in calls]
    return {"failed_call": bool(failures), "recovered": bool(failures) and record.get("correct") is True,
            "retried_changed": changed, "retried_same": bool(later) and not changed,
            "verification_calls": sum(a or c for a, c in zip(after, checking, strict=True)),
            "after_answer": sum(after), "checks_candidate": sum(checking)}


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def summarize(records: Iterable[Record]) -> dict[str, Any]:
    """The behaviour metrics of a run (`metrics.json` key `behaviour`); each record's flags come from
    `rollout_behaviour` (computed here when a record does not carry them)."""
    records = list(records)
    flags = [r.get("behaviour") or rollout_behaviour(r) for r in records]
    calls = sum(len(r["tool_calls"]) for r in records)
    with_failure = [f for f in flags if f["failed_call"]]
    verified = sum(f["verification_calls"] for f in flags)
    by_source: dict[str, dict[str, Any]] = {}
    for source in sorted({r.get("source") or "" for r in records}):
        mine = [(r, f) for r, f in zip(records, flags, strict=True) if (r.get("source") or "") == source]
        n_calls = sum(len(r["tool_calls"]) for r, _ in mine)
        by_source[source] = {
            "n": len(mine), "tool_call_rate": _share(sum(bool(r["tool_calls"]) for r, _ in mine), len(mine)),
            "calls_per_answer": _share(n_calls, len(mine)),
            "failed_call_rate": _share(sum(f["failed_call"] for _, f in mine), len(mine)),
            "verification_share": _share(sum(f["verification_calls"] for _, f in mine), n_calls)}
    return {
        "rollouts_with_failed_call": len(with_failure),
        "recovered_rate": _share(sum(f["recovered"] for f in with_failure), len(with_failure)),
        "retried_changed_rate": _share(sum(f["retried_changed"] for f in with_failure), len(with_failure)),
        "retried_same_rate": _share(sum(f["retried_same"] for f in with_failure), len(with_failure)),
        "verification_calls": verified,
        "verification_share": _share(verified, calls),
        "after_answer_calls": sum(f["after_answer"] for f in flags),
        "checking_programs": sum(f["checks_candidate"] for f in flags),
        "verifying_rollout_rate": _share(sum(bool(f["verification_calls"]) for f in flags), len(records)),
        "by_source": by_source,
    }
