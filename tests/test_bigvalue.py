"""Big-value GSM8K, built from the real GSM8K files: exact replays, big numbers, determinism, disjoint splits."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest
import sympy

from delegate.training.bigvalue import NotReplayable, build, decimal, final_answer, plan, rebuild, replay
from delegate.training.data import load_problems


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def gsm8k(shared_data):
    return {split: rows_of(shared_data / "gsm8k" / f"{split}.jsonl") for split in ("train", "test")}


@pytest.mark.parametrize("split", ["train", "test"])
def test_replaying_with_the_original_numbers_gives_gsm8k_s_own_answer(gsm8k, split):
    replayed = 0
    for row in gsm8k[split]:
        try:
            _, chain, sources, answer_step = plan(row["question"], row["answer"])
        except NotReplayable:
            continue
        assert replay(chain, sources, {})[answer_step] == final_answer(row["answer"]), row["question"]
        replayed += 1
    assert replayed > 0.3 * len(gsm8k[split])


def independent_value(step_expr: str, numbers: list[Fraction]) -> Fraction:
    """The expression with its numbers replaced, evaluated by sympy (not by the module's own evaluator)."""
    parts = iter(numbers)
    text = re.sub(r"\d*\.\d+|\d+", lambda _: f"Rational('{next(parts)}')", step_expr)
    value = sympy.sympify(text, locals={"Rational": sympy.Rational})
    return Fraction(int(value.p), int(value.q))


@pytest.mark.parametrize("split", ["train", "test"])
def test_big_values_are_big_and_the_answers_recompute_exactly(gsm8k, split):
    built = list(build(gsm8k[split][:400], seed=0))
    assert built, "nothing kept"
    for row in built:
        mapping = {Fraction(k): Fraction(v) for k, v in json.loads(row["mapping"]).items()}
        for new in mapping.values():
            assert 9 <= len(str(int(new))) <= 11, row["prompt"]
        _, chain, sources, answer_step = plan(row["original_question"], next(
            r["answer"] for r in gsm8k[split] if r["question"] == row["original_question"]))
        values: list[Fraction] = []
        for step, origin in zip(chain, sources, strict=True):
            numbers = [mapping.get(x, x) if kind == "q" else values[int(x)] for kind, x in origin]
            values.append(independent_value(step.expr, numbers))
        assert decimal(values[answer_step]) == row["answer"]
        for new in mapping.values():
            assert decimal(new) in row["prompt"]


def test_the_same_seed_gives_the_same_problems_and_another_seed_others(gsm8k):
    rows = gsm8k["test"][:200]
    first, again, other = (list(build(rows, seed)) for seed in (0, 0, 1))
    assert first == again
    others = {r["original_question"]: r["prompt"] for r in other}
    common = [r for r in first if r["original_question"] in others]
    assert len(common) > 0.8 * len(first)  # a seed can fail a few draws that another keeps
    assert all(r["prompt"] != others[r["original_question"]] for r in common)


def test_train_and_test_splits_share_no_problem(gsm8k):
    train = {r["original_question"] for r in build(gsm8k["train"])}
    test = {r["original_question"] for r in build(gsm8k["test"])}
    assert train and test and not train & test
    survived = {"train": len(train) / len(gsm8k["train"]), "test": len(test) / len(gsm8k["test"])}
    print(f"big-value GSM8K kept: train {len(train)} ({survived['train']:.1%}), "
          f"test {len(test)} ({survived['test']:.1%})")
    assert min(survived.values()) > 0.25


def test_a_chain_with_a_number_from_nowhere_is_dropped():
    with pytest.raises(NotReplayable, match="neither"):
        rebuild("Tom has 5 apples. How many in all?", "5*7=<<5*7=35>>35\n#### 35")  # 7 comes from nowhere
    assert rebuild("Tom eats 5 apples a day. How many in a week?", "5*7=<<5*7=35>>35\n#### 35").answer


def test_a_step_that_does_not_recompute_is_dropped():
    with pytest.raises(NotReplayable, match="does not recompute"):
        plan("Tom has 5 apples and 4 pears.", "5+4=<<5+4=10>>10\n#### 10")


def test_load_problems_builds_big_value_gsm8k_from_the_real_file(shared_data):
    data = load_problems(str(shared_data / "gsm8k" / "test.jsonl"), big_values=True, limit=20)
    assert len(data) == 20 and set(data["source"]) == {"big-value-gsm8k"}
    assert all(re.search(r"\d{9,}", p) for p in data["prompt"])


def test_load_problems_reads_the_real_gsm8k_and_math500_files(shared_data):
    gsm = load_problems(str(shared_data / "gsm8k" / "test.jsonl"))
    assert len(gsm) == 1319 and gsm["answer"][0] == "18" and set(gsm["source"]) == {"gsm8k"}
    math = load_problems(str(shared_data / "math500" / "test.jsonl"), levels=[5], filters=False)
    assert len(math) == sum(r["level"] == 5 for r in rows_of(shared_data / "math500" / "test.jsonl"))
    assert math["answer"][0] and all(s.startswith("math/") for s in math["source"])
    first = rows_of(shared_data / "math500" / "test.jsonl")[0]
    assert load_problems(str(shared_data / "math500" / "test.jsonl"), filters=False)["answer"][0] == first["answer"]
