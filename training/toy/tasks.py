"""Big-number word problems in the spirit of big-value-gsm, with exact answers.

Each problem is a short story whose quantities have 9 to 11 digits (or several decimals), built from one to three
operations. The reference answer is computed with `Fraction` as the story is built; `expression` is the same
computation as Python source, which is what the toy planner asks for and the toy coder prints.

```
python -m delegate.training.toy.tasks --n 1000 --seed 0 --out runs/toy/problems.jsonl
```
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

PLACES = ["warehouse", "library", "bank", "farm", "factory", "harbor", "museum", "mine", "school", "market"]
ITEMS = ["bolts", "pages", "coins", "grains", "bricks", "stamps", "tickets", "beads", "screws", "shells"]
STUFF = ["sugar", "sand", "flour", "salt", "rice", "oil", "milk", "water", "coal", "gold"]


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # exact: an integer or a terminating decimal, no trailing zeros
    expression: str  # Python source that computes the answer (decimals as literals)
    ops: int
    decimal: bool

    def row(self) -> dict[str, object]:
        return {"prompt": self.question, **asdict(self)}


def format_exact(value: Fraction) -> str:
    """An integer or a terminating decimal, written exactly."""
    if value.denominator == 1:
        return str(value.numerator)
    sign, value = ("-" if value < 0 else ""), abs(value)
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
        if places > 30:
            raise ValueError(f"{value} has no terminating decimal")
    digits = str((value * 10**places).numerator).rjust(places + 1, "0")
    return f"{sign}{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")


class _Builder:
    def __init__(self, rng: random.Random, low: int, high: int, decimal: bool) -> None:
        self.rng, self.low, self.high, self.decimal = rng, low, high, decimal

    def quantity(self) -> tuple[Fraction, str]:
        """A big quantity: `low` to `high` digits, or a decimal with two or three places."""
        if self.decimal:
            places = self.rng.choice([2, 3])
            digits = self.rng.randint(max(self.low - 3, places + 1), self.high - 2)
            raw = self.rng.randint(10 ** (digits - 1), 10**digits - 1)
            text = format_exact(Fraction(raw, 10**places))
            return Fraction(text), text
        raw = self.rng.randint(10 ** (self.rng.randint(self.low, self.high) - 1), 10**self.high - 1)
        raw = int(str(raw)[: self.rng.randint(self.low, self.high)])
        return Fraction(raw), str(raw)

    def factor(self) -> int:
        return self.rng.randint(3, 999)


def _group(expression: str) -> str:
    return f"({expression})" if " " in expression else expression


def _plain(b: _Builder) -> Problem:
    (x, xs), (y, ys) = b.quantity(), b.quantity()
    op = b.rng.choice(["+", "-", "*"])
    if op == "-" and y > x:
        (x, xs), (y, ys) = (y, ys), (x, xs)
    value = {"+": x + y, "-": x - y, "*": x * y}[op]
    return Problem(f"What is {xs} {op} {ys}?", format_exact(value), f"{xs} {op} {ys}", 1, b.decimal)


def _story(b: _Builder, ops: int) -> Problem:
    place = b.rng.choice(PLACES)
    if b.decimal:
        thing = b.rng.choice(STUFF)
        unit, noun = "kilograms of ", thing
    else:
        unit, noun = "", b.rng.choice(ITEMS)
    value, text = b.quantity()
    expression = text
    sentences = [f"A {place} holds {text} {unit}{noun}."]
    question = f"How many {unit}{noun} does the {place} hold now?"
    for step in range(ops):
        last = step == ops - 1
        kinds = ["add", "remove", "times"] + (["share"] if last and not b.decimal else [])
        kind = b.rng.choice(kinds)
        if kind == "add":
            amount, amount_text = b.quantity()
            value, expression = value + amount, f"{expression} + {amount_text}"
            sentences.append(f"It receives {amount_text} more {unit}{noun}.")
        elif kind == "remove":
            amount, amount_text = b.quantity()
            while amount >= value:  # shorter by a digit: whole numbers stay whole
                amount = amount / 10 if b.decimal else Fraction(amount.numerator // 10)
                amount_text = format_exact(amount)
            value, expression = value - amount, f"{expression} - {amount_text}"
            sentences.append(f"Then {amount_text} {unit}{noun} are taken away.")
        elif kind == "times":
            k = b.factor()
            value, expression = value * k, f"{_group(expression)} * {k}"
            sentences.append(f"Then the amount grows to {k} times as much.")
        else:
            divisors = [k for k in range(3, 1000) if value.denominator == 1 and value.numerator % k == 0]
            if not divisors:
                amount, amount_text = b.quantity()
                value, expression = value + amount, f"{expression} + {amount_text}"
                sentences.append(f"It receives {amount_text} more {unit}{noun}.")
                continue
            k = b.rng.choice(divisors)
            value, expression = value / k, f"{_group(expression)} // {k}"
            sentences.append(f"The {noun} are shared equally among {k} stores.")
            question = f"How many {noun} does each store get?"
    return Problem(" ".join([*sentences, question]), format_exact(value), expression, ops, b.decimal)


def generate(n: int, seed: int = 0, max_ops: int = 3, digits: tuple[int, int] = (9, 11),
             decimal_share: float = 0.25, plain_share: float = 0.2) -> list[Problem]:
    """`n` distinct problems. Difficulty: `max_ops` operations at most, quantities of `digits` digits."""
    rng = random.Random(seed)
    seen: set[str] = set()
    problems: list[Problem] = []
    while len(problems) < n:
        builder = _Builder(rng, *digits, decimal=rng.random() < decimal_share)
        problem = _plain(builder) if rng.random() < plain_share else _story(builder, rng.randint(1, max_ops))
        if problem.question not in seen:
            seen.add(problem.question)
            problems.append(problem)
    return problems


def held_out(problem: Problem, fraction: float = 0.2) -> bool:
    """Whether a problem belongs to the held-out split: decided by a hash of its question, so the two splits
    share no problem whatever seeds or sizes produced them."""
    digest = hashlib.sha256(problem.question.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split(problems: list[Problem], fraction: float = 0.2) -> tuple[list[Problem], list[Problem]]:
    test = [p for p in problems if held_out(p, fraction)]
    return [p for p in problems if not held_out(p, fraction)], test


def write_jsonl(problems: list[Problem], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(p.row()) + "\n" for p in problems))
    return path


def read_jsonl(path: str | Path) -> Iterator[Problem]:
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        yield Problem(row["question"], row["answer"], row["expression"], row["ops"], row["decimal"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-ops", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    print(write_jsonl(generate(args.n, args.seed, args.max_ops), args.out))


if __name__ == "__main__":
    main()
