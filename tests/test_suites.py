"""The generated suites of unseen tasks (`training.suites`) and their checkers (`training.suite_checks`).

Every generated answer is re-derived here from the prompt's text alone (brute force, exact fractions, an
independent reading of English number words), so a generator whose prompt and reference disagree fails."""

from __future__ import annotations

import itertools
import re
from fractions import Fraction

import pytest

from delegate.training import suite_checks, suites
from delegate.training.data import load_problems
from delegate.training.rewards import answers_match

N = 60  # problems per suite in the answer checks


def problems(name: str, split: str = "test", n: int = N, seed: int = 0) -> list[suites.Problem]:
    return suites.generate(name, split, n, seed)


# --- CountDown ------------------------------------------------------------------------------------------------

def reachable(numbers: list[int]) -> dict[Fraction, str]:
    """Every value an expression over a sub-multiset of `numbers` reaches (+ - * /, exact), with one expression."""
    found: dict[Fraction, str] = {}

    def walk(items: list[tuple[Fraction, str]]) -> None:
        for value, text in items:
            found.setdefault(value, text)
        for i, j in itertools.permutations(range(len(items)), 2):
            (a, ea), (b, eb) = items[i], items[j]
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            options = [(a + b, f"({ea}+{eb})"), (a - b, f"({ea}-{eb})"), (a * b, f"({ea}*{eb})")]
            if b:
                options.append((a / b, f"({ea}/{eb})"))
            for option in options:
                walk([*rest, option])

    for size in range(1, len(numbers) + 1):
        for subset in set(itertools.combinations(sorted(numbers), size)):
            walk([(Fraction(n), str(n)) for n in subset])
    return found


def countdown_prompt(prompt: str) -> tuple[list[int], int]:
    given = re.search(r"Using the numbers ([\d, ]+), each", prompt).group(1)
    target = re.search(r"equals (\d+)\.", prompt).group(1)
    return [int(n) for n in given.split(",")], int(target)


def test_every_countdown_target_is_reachable_and_its_reference_matches_the_prompt():
    for problem in problems("countdown", n=25):
        numbers, target = countdown_prompt(problem.prompt)
        assert suite_checks.countdown_reference(problem.answer) == (target, numbers)
        assert 3 <= len(numbers) <= 4 and target not in numbers
        expressions = reachable(numbers)
        assert Fraction(target) in expressions, problem.prompt
        assert suite_checks.countdown(problem.answer, expressions[Fraction(target)])  # an independent solution
        assert suite_checks.countdown(problem.answer, problem.solution)


def test_countdown_checker_refuses_reused_missing_and_wrong_numbers():
    reference = "24 from 3, 8, 2"
    assert suite_checks.countdown(reference, "3 * 8")
    assert suite_checks.countdown(reference, "3 \\times 8 = 24")
    assert suite_checks.countdown(reference, "\\frac{8}{2} \\cdot (3 + 3 - 0)") is False  # 3 used twice, 0 not given
    assert not suite_checks.countdown(reference, "8 * 3 = 25")
    assert not suite_checks.countdown(reference, "8 + 8 + 8")  # 8 given once
    assert not suite_checks.countdown(reference, "4 * 6")  # neither given
    assert not suite_checks.countdown(reference, "24")  # not given either
    assert not suite_checks.countdown(reference, "3 * 8 + 2 - 2")  # 2 given once
    assert not suite_checks.countdown(reference, "-(2 - 3) * 8 * 3")  # unary minus
    assert not suite_checks.countdown(reference, "2**3 * 3")
    assert not suite_checks.countdown(reference, "8 / (2 - 2) + 24")
    assert not suite_checks.countdown(reference, "__import__('os')")
    assert suite_checks.countdown("12 from 3, 8, 2", "8 / 2 * 3")
    assert suite_checks.countdown("12 from 3, 8, 2", "(3 / 2) * 8")  # exact fractions on the way are fine


# --- Knights and Knaves ---------------------------------------------------------------------------------------

SENTENCES = [  # an independent reading of the puzzle's English: (pattern, truth of the statement in a world)
    (r"(\w+) is a (knight|knave)\.", lambda w, a, r: w[a] == (r == "knight")),
    (r"(\w+) and (\w+) are both (knight|knave)s\.", lambda w, a, b, r: w[a] == w[b] == (r == "knight")),
    (r"At least one of (\w+) and (\w+) is a (knight|knave)\.",
     lambda w, a, b, r: (r == "knight") in (w[a], w[b])),
    (r"(\w+) and (\w+) are the same kind\.", lambda w, a, b: w[a] == w[b]),
    (r"(\w+) and (\w+) are different kinds\.", lambda w, a, b: w[a] != w[b]),
    (r"Exactly (\d+) of us (?:is a|are) (knight|knave)s?\.",
     lambda w, k, r: sum(v == (r == "knight") for v in w.values()) == int(k)),
]


def knights_solutions(prompt: str) -> tuple[list[str], list[dict[str, bool]]]:
    said = re.findall(r'(\w+) says: "([^"]+)"', prompt)
    names = [name for name, _ in said]
    tests = []
    for speaker, sentence in said:
        sentence = re.sub(r"\bI are\b", f"{speaker} are", sentence)  # "Bob and I are the same kind"
        matches = [(f, m.groups()) for pattern, f in SENTENCES if (m := re.fullmatch(pattern, sentence))]
        assert len(matches) == 1, sentence
        tests.append(matches[0])
    worlds = [dict(zip(names, roles, strict=True)) for roles in itertools.product((True, False), repeat=len(names))]
    return names, [w for w in worlds if all(f(w, *args) == w[name] for name, (f, args) in zip(names, tests,
                                                                                              strict=True))]


def test_every_knights_puzzle_has_one_solution_and_it_is_the_reference():
    sizes = set()
    for problem in problems("knights"):
        names, solutions = knights_solutions(problem.prompt)
        assert len(solutions) == 1, problem.prompt
        assert suite_checks.knights_reference(problem.answer) == solutions[0]
        assert suite_checks.knights(problem.answer, problem.answer)
        sizes.add(len(names))
    assert sizes == {2, 3, 4, 5}


@pytest.mark.parametrize("answer", ["Alice: knight, Bob: knave, Carol: knight",
                                    "\\text{Alice is a knight, Bob is a knave and Carol is a knight}",
                                    "Alice and Carol are knights; Bob is a knave",
                                    "Knights: Alice, Carol; Knaves: Bob", "carol: Knight, bob: knave, alice: knight"])
def test_knights_checker_reads_the_usual_ways_of_saying_it(answer):
    assert suite_checks.knights("Alice: knight, Bob: knave, Carol: knight", answer)


@pytest.mark.parametrize("answer", ["Alice: knight, Bob: knight, Carol: knight", "Alice: knight, Carol: knight",
                                    "Alice: knight, Bob: knave, Carol: knight, Bob: knight",
                                    "Alice and Carol are knights, Bob is not a knight", "Alice, Bob, Carol", ""])
def test_knights_checker_refuses_wrong_missing_contradictory_or_negated_roles(answer):
    assert not suite_checks.knights("Alice: knight, Bob: knave, Carol: knight", answer)


# --- letters, comparison, arithmetic in words -------------------------------------------------------------------

def test_every_letter_count_is_the_count_in_the_prompt():
    zero = 0
    for problem in problems("letters"):
        letter, phrase = re.search(r'letter "(\w)" appear in "([a-z ]+)"', problem.prompt).groups()
        assert int(problem.answer) == sum(1 for c in phrase if c == letter)
        zero += problem.answer == "0"
    assert suite_checks.same_number("3", "\\boxed{3}".removeprefix("\\boxed{").removesuffix("}"))
    assert 0 < zero < N // 2  # some absent letters, mostly present ones


def test_every_comparison_answer_is_the_larger_number_as_written():
    traps = 0
    for problem in problems("compare"):
        a, b = re.search(r"Which is larger, (\S+) or (\S+)\?", problem.prompt).groups()
        larger, smaller = (a, b) if Fraction(a) > Fraction(b) else (b, a)
        assert problem.answer == larger and Fraction(a) != Fraction(b)
        traps += "." in larger and "." in smaller and len(larger) < len(smaller)  # 3.9 against 3.11
    assert traps >= 5


@pytest.mark.parametrize("predicted, right", [("3.9", True), ("3.90", True), ("\\text{3.9}", True), ("3.11", False),
                                              ("3.9 > 3.11", False), ("39/10", True), ("\\frac{39}{10}", True),
                                              ("", False), ("3,9", False)])
def test_number_checker_wants_one_number_of_the_right_value(predicted, right):
    assert suite_checks.same_number("3.9", predicted) is right


ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
WORD_VALUES = {w: i for i, w in enumerate(ONES)} | {w: 10 * i for i, w in enumerate(TENS, 2)}
SCALE_VALUES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}


def number_from_words(text: str) -> int:
    total = group = 0
    for word in re.findall(r"[a-z]+", text):
        if word in WORD_VALUES:
            group += WORD_VALUES[word]
        elif word == "hundred":
            group *= 100
        else:
            total += group * SCALE_VALUES[word]
            group = 0
    return total + group


def test_every_arithmetic_in_words_answer_is_the_value_of_the_words():
    for problem in problems("words"):
        a, op, b = re.search(r"What is (.+) (plus|minus|times) (.+)\? Give", problem.prompt).groups()
        x, y = number_from_words(a), number_from_words(b)
        assert int(problem.answer) == {"plus": x + y, "minus": x - y, "times": x * y}[op]
        assert x >= 100 and y >= 100


def test_number_words_read_back():
    for n in (0, 7, 15, 40, 99, 100, 101, 110, 999, 1000, 1001, 20_000_019, 3_040_012, 999_999_999_999):
        assert number_from_words(suites.in_words(n)) == n
    assert suites.in_words(3_040_012) == "three million, forty thousand, twelve"


@pytest.mark.parametrize("name", ["letters", "compare", "words"])
def test_numeric_references_also_pass_the_reward_answer_matching(name):
    for problem in problems(name, n=10):
        assert answers_match(problem.answer, problem.answer)


# --- splits, seeds, the loader ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(suites.SUITES))
def test_generation_is_reproducible_by_seed(name):
    assert problems(name, n=20) == problems(name, n=20)
    assert problems(name, n=20) != problems(name, n=20, seed=1)


@pytest.mark.parametrize("name", list(suites.SUITES))
def test_held_out_split_is_disjoint_from_train_whatever_the_seeds(name):
    test = problems(name, "test", 100)
    train = problems(name, "train", 300) + problems(name, "train", 300, seed=7)
    assert len({p.key for p in test}) == len(test)  # no repeats within a split
    assert not {p.key for p in test} & {p.key for p in train}
    assert not {p.prompt for p in test} & {p.prompt for p in train}
    assert all(suites.split_of(p.key) == "test" for p in test)


def test_load_problems_interleaves_the_suites_without_filtering():
    data = load_problems("unseen", split="test", limit=10, seed=2)
    assert data.column_names == ["prompt", "answer", "source"]
    assert data["source"] == suites.sources() * 2
    assert data["prompt"][0] == problems("countdown", n=2, seed=2)[0].prompt
    assert list(load_problems("unseen:knights,letters", limit=3)["source"]) == ["unseen/knights", "unseen/letters",
                                                                               "unseen/knights"]


def test_load_problems_names_the_known_suites_and_splits():
    with pytest.raises(ValueError, match=r"unknown suite 'chess'.*countdown"):
        load_problems("unseen:chess")
    with pytest.raises(ValueError, match="split 'validation'"):
        load_problems("unseen:letters", split="validation", limit=2)
    with pytest.raises(ValueError, match="split, limit and seed only"):
        load_problems("unseen", big_values=True)


def test_grade_uses_the_suite_checker_for_suites_and_answer_matching_elsewhere():
    assert suites.grade("24 from 3, 8, 2", "3*8", "unseen/countdown")
    assert not suites.grade("24 from 3, 8, 2", "24", "unseen/countdown")
    assert suites.grade("1/2", "0.5", "math") and suites.grade("1/2", "\\frac{1}{2}", None)
    assert not suites.grade("3.9", None, "unseen/compare")
