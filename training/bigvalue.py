"""Big-value GSM8K: GSM8K problems whose numbers are 9- to 11-digit values, answers recomputed exactly.

```bash
python -m delegate.training.bigvalue ../shared/data/gsm8k/test.jsonl --out runs/data/big-value-gsm8k-test.jsonl
```
```python
load_problems("../shared/data/gsm8k/train.jsonl", big_values=True, seed=0)   # the same, inside a recipe's data:
```

GSM8K's worked answers annotate every calculation as `<<expr=value>>`. A problem is rebuilt only when that chain
can be replayed and every number in it has one known origin:
- each number in each expression is either a number of the question or the value of exactly one earlier step
  (never both, never neither), each expression recomputes exactly to its annotated value, and the final answer
  (after `####`) is one step's value;
- the words do no arithmetic of their own (`5*3 = 15` with no annotation), and every step but the last feeds a
  later one: otherwise the solution computed something in its head that the chain cannot replay;
- every quantity the question writes is used by the chain, at least as often as it is written, and a small value
  (2, 3, 4) is not used more often than written (it may be a hidden constant, such as the sides of a rectangle);
- no question number equals a constant its words name (60 for "minutes", 5 for "weekdays", 2 for "perimeter");
- the question asks for no rounding, and GSM8K's own solution is not known to be wrong (`GSM8K_ERRORS`).
Each distinct quantity of the question is then replaced by a new value whose integer part has 9 to 11 digits (a
decimal keeps its decimal places; cardinal words such as "three" become digits), drawn in the same order as the
originals so that "more" stays more. 0 and 1, percentages, both parts of a fraction or a clock time, "half",
"twice", "dozen" and the conversions of units the question names stay as they are. The chain is replayed in exact
rational arithmetic, and a draw is kept if every step that was positive stays positive and the answer is a decimal
of at most 6 places; otherwise up to `tries` other draws are made (half of them multiples of 720720, so that
dividing by a small count comes out even), then the problem is dropped. Everything is deterministic for a seed and
a question. `--audit N` writes N kept problems as a sheet to read against their answers (docs/audits/).

The `train` split is built from GSM8K train and the `test` split from GSM8K test, so they share no problem.
Replaying a chain with the original values reproduces GSM8K's own answer; the tests check it on every problem kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

# A number as GSM8K's questions write it: 80,000 or 1.5 or 16; not part of a word or of another number.
_LITERAL = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w]|[.,]\d)(%?)")
_STEP = re.compile(r"<<([^=<>]*)=([^<>]*)>>")
# A fraction (1/4, 3 / 5) or a clock time or ratio (3:30, 2:1): both parts stay as written.
_FRACTION = re.compile(r"(?<![\w.,/])(\d+)\s*/\s*(\d+)(?![\w/]|[.,]\d)")
_TIME = re.compile(r"(?<![\w.,:])(\d+):(\d+)(?![\w:]|[.,]\d)")
_ROUNDING = re.compile(r"\bround(?:ed|ing)? (?:to|up|down|off)\b|\bnearest\b", re.I)
_DENOMINATORS = {"halve": 2, "half": 2, "third": 3, "quarter": 4, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
                 "eighth": 8, "ninth": 9, "tenth": 10}
_FRACTION_WORD = re.compile(r"[\s-]+(halves|thirds?|quarters?|fourths?|fifths?|sixths?|sevenths?|eighths?|ninths?|"
                            r"tenths?)\b", re.I)
_PERCENT_WORD = re.compile(r"\s*(?:percent|per cent)\b", re.I)
# Where a clause of a solution's words ends: a sentence, a line, a colon or comma before a space.
_CLAUSE_END = re.compile(r"(?<=[.:;,])\s+|\n")
# Arithmetic in a solution's words: an equals sign before a number, or two numbers joined by + * x × ÷ ("-" and
# "/" also write ranges, dates and fractions, and a computed value shows up at its "=").
_PROSE_ARITHMETIC = re.compile(r"=\s*\$?\s*\d|\d\s*(?:[+*×÷]|x(?=\s*\$?\d))\s*\$?\d")
_EXPR_NUMBER = re.compile(r"\d*\.\d+|\d+")
_EXPR_CHARS = re.compile(r"[\d.+\-*/() ]+")
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen twenty")
_CARDINALS = {w: i for i, w in enumerate(_ONES.split())} | {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
                                                           "seventy": 70, "eighty": 80, "ninety": 90}
_WORD = re.compile(r"\b(" + "|".join(sorted(_CARDINALS, key=len, reverse=True)) + r")\b", re.I)
# Words that stand for a number the chain uses but that are no quantity to enlarge: kept as they are.
_CONSTANT_WORDS = {"half": (2, Fraction(1, 2)), "halves": (2, Fraction(1, 2)), "twice": (2,), "double": (2,),
                   "doubles": (2,), "triple": (3,), "thrice": (3,), "dozen": (12,), "dozens": (12,),
                   "quarter": (4, 25, Fraction(1, 4)), "quarters": (4, 25, Fraction(1, 4)),
                   "third": (3, Fraction(1, 3)), "thirds": (3, Fraction(1, 3)), "fourth": (4, Fraction(1, 4)),
                   "fourths": (4, Fraction(1, 4)), "fifth": (5, Fraction(1, 5)), "fifths": (5, Fraction(1, 5))}
# Units whose conversions a solution may use without the question writing them (the unit's word must be there).
_UNIT_WORDS = {"week": (7, 52), "weeks": (7, 52), "weekly": (7, 52), "day": (24, 7, 365, 30), "days": (24, 7, 365, 30),
               "daily": (7, 365, 30), "hour": (60, 24), "hours": (60, 24), "minute": (60,), "minutes": (60,),
               "month": (12, 30), "months": (12, 30), "monthly": (12,), "year": (12, 52, 365), "years": (12, 52, 365),
               "cents": (100,), "cent": (100,), "foot": (12,), "feet": (12,), "inches": (12,), "yard": (3,),
               "yards": (3,), "pound": (16,), "pounds": (16,), "ounces": (16,), "gallon": (4, 128),
               "gallons": (4, 128), "quarts": (4,), "kilometers": (1000,), "kilograms": (1000,), "meters": (100,),
               "liters": (1000,), "milliliters": (1000,), "second": (60,), "seconds": (60,),
               "weekday": (5,), "weekdays": (5,), "weekend": (2,), "weekends": (2,), "decade": (10,),
               "decades": (10,), "century": (100,), "dimes": (10,), "dime": (10,), "nickels": (5,), "nickel": (5,),
               "pennies": (100,), "dollar": (100,), "dollars": (100,), "perimeter": (2, 4), "square": (4,),
               "squares": (4,), "triangle": (3,), "triangles": (3,), "rectangle": (2, 4), "rectangular": (2, 4),
               "hexagon": (6,), "legs": (2, 4), "wheels": (2, 3, 4), "bicycle": (2,), "bicycles": (2,),
               "bike": (2,), "bikes": (2,), "tricycle": (3,), "tricycles": (3,), "pair": (2,), "pairs": (2,),
               "twins": (2,), "triplets": (3,), "both": (2,), "score": (20,), "ton": (2000,), "tons": (2000,),
               "mile": (5280,), "miles": (5280,), "leap": (366,)}
# Phrases that do the same: "a round trip" doubles a distance.
_CONSTANT_PHRASES = {"round trip": (2,), "round-trip": (2,), "each way": (2,), "both ways": (2,),
                     "there and back": (2,), "back and forth": (2,)}
# Values a solution uses as constants that no word of the question names (a doubling, the sides of a rectangle, a
# third; percentages and units are cued by their signs and words above). A question number of this value that
# the chain uses more often than the question writes it may be such a constant: the problem is dropped.
_LIKELY_CONSTANTS = frozenset(Fraction(v) for v in (2, 3, 4))


# GSM8K rows whose own worked solution is wrong (sha256 of the question, first 12 hex digits): found by reading
# the rebuilt problems by hand (docs/audits/). Their chain replays GSM8K's error with any numbers.
GSM8K_ERRORS = {
    "5dc76d774bd0": "test: Kim, Alexandra, Maryam, Sarah: the total adds Maryam's margin where Sarah's $300 belongs",
}


class NotReplayable(ValueError):
    """Why a problem's calculation chain cannot be replayed (the reason is the message)."""


@dataclass(frozen=True)
class Literal:
    start: int
    end: int
    value: Fraction
    places: int  # decimal places as written
    word: bool = False  # written as a word ("three"); replaced by digits


@dataclass(frozen=True)
class Step:
    expr: str
    value: Fraction


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # exact, as a plain decimal string
    mapping: dict[str, str]  # original value -> new value, as strings
    steps: tuple[tuple[str, str], ...] = ()  # the replayed chain: each step's expression and value, new numbers


def literals(question: str) -> tuple[list[Literal], set[Fraction]]:
    """The question's quantities that may be enlarged (digits and cardinal words), and the values it names that
    stay as they are: 0 and 1; percentages (p, p/100 and 100); both parts of a fraction (`1/4`: 1, 4 and 1/4) and of
    a clock time or ratio (`3:30`); "half", "twice", "dozen" and the like; and the conversions of the units it
    names (60 for minutes, 7 and 52 for weeks, ...)."""
    found, constants = [], {Fraction(0), Fraction(1)}
    fixed = set()  # character positions of literals that are parts of a fraction or a time: never enlarged
    for m in _FRACTION.finditer(question):
        top, bottom = Fraction(m.group(1)), Fraction(m.group(2))
        constants |= {top, bottom} | ({top / bottom} if bottom else set())
        fixed |= {m.start(1), m.start(2)}
    for m in _TIME.finditer(question):
        constants |= {Fraction(m.group(1)), Fraction(m.group(2))}
        fixed |= {m.start(1), m.start(2)}
    for m in _LITERAL.finditer(question):
        whole, frac, percent = m.group(1), m.group(2) or "", m.group(3)
        value = Fraction(whole.replace(",", "") + frac)
        if percent or _PERCENT_WORD.match(question, m.end()):
            constants |= {value, value / 100, Fraction(100)}
        elif m.start() in fixed or value in (0, 1):
            constants.add(value)
        else:
            found.append(Literal(m.start(), m.end(), value, len(frac) - 1 if frac else 0))
    for m in _WORD.finditer(question):
        value = Fraction(_CARDINALS[m.group(1).lower()])
        part = _FRACTION_WORD.match(question, m.end())
        if part:  # "two thirds": a fraction, kept as written (2, 3 and 2/3)
            bottom = _DENOMINATORS[part.group(1).lower().rstrip("s")]
            constants |= {value, Fraction(bottom), value / bottom}
        elif value <= 1:
            constants.add(value)
        else:
            found.append(Literal(m.start(), m.end(), value, 0, word=True))
    lowered = question.lower()
    for word in re.findall(r"[a-z]+", lowered):
        constants.update(Fraction(v) for v in _CONSTANT_WORDS.get(word, ()) + _UNIT_WORDS.get(word, ()))
    for phrase, values in _CONSTANT_PHRASES.items():
        if phrase in lowered:
            constants.update(Fraction(v) for v in values)
    return sorted(found, key=lambda lit: lit.start), constants


def outside_arithmetic(answer: str) -> str | None:
    """Arithmetic the worked solution does in its words rather than in an annotation (`5*3 = 15`, `= 15` with no
    `<<...>>` after it), or None. Such a solution computes values the chain cannot replay, so a later step that
    uses one would be tied to a question number or a constant by value alone."""
    pieces = _STEP.split(answer.rsplit("####", 1)[0])[::3]  # the words between annotations
    for i, piece in enumerate(pieces):
        if i < len(pieces) - 1:
            # The clause just before an annotation repeats its expression, units and all ("400 pages - 160 pages =
            # <<400-160=240>>"): not arithmetic of its own, unless it holds another equals sign.
            *before, clause = _CLAUSE_END.split(piece)
            if clause.count("=") > 1:
                return clause.strip()
            piece = "".join(before)
        found = _PROSE_ARITHMETIC.search(piece)
        if found:
            return found.group(0)
    return None


def steps(answer: str) -> list[Step]:
    chain = []
    for m in _STEP.finditer(answer):
        expr, value = m.group(1).strip(), m.group(2).strip().replace(",", "")
        if not _EXPR_CHARS.fullmatch(expr) or not re.fullmatch(r"-?(\d*\.\d+|\d+)", value):
            raise NotReplayable(f"step not plain arithmetic: <<{m.group(1)}={m.group(2)}>>")
        chain.append(Step(expr, Fraction(value)))
    if not chain:
        raise NotReplayable("no annotated steps")
    return chain


def evaluate(expr: str, values: list[Fraction]) -> Fraction:
    """`expr` with its numbers replaced, in order, by `values`, evaluated exactly (+ - * / and brackets)."""
    tokens = re.findall(r"\d*\.\d+|\d+|[+\-*/()]", expr)
    numbers = iter(values)
    pos = 0

    def atom() -> Fraction:
        nonlocal pos
        token = tokens[pos] if pos < len(tokens) else ""
        pos += 1
        if token == "(":
            value = total()
            if pos >= len(tokens) or tokens[pos] != ")":
                raise NotReplayable(f"unbalanced brackets in {expr!r}")
            pos += 1
            return value
        if token in ("-", "+"):
            return -atom() if token == "-" else atom()
        if token and token[0] in "0123456789.":
            return next(numbers)
        raise NotReplayable(f"cannot read {expr!r}")

    def product() -> Fraction:
        nonlocal pos
        value = atom()
        while pos < len(tokens) and tokens[pos] in "*/":
            op = tokens[pos]
            pos += 1
            right = atom()
            if op == "/" and right == 0:
                raise NotReplayable(f"division by zero in {expr!r}")
            value = value * right if op == "*" else value / right
        return value

    def total() -> Fraction:
        nonlocal pos
        value = product()
        while pos < len(tokens) and tokens[pos] in "+-":
            op = tokens[pos]
            pos += 1
            value = value + product() if op == "+" else value - product()
        return value

    result = total()
    if pos != len(tokens):
        raise NotReplayable(f"cannot read {expr!r}")
    return result


def final_answer(answer: str) -> Fraction:
    text = answer.rsplit("####", 1)[-1].strip().replace(",", "")
    if not re.fullmatch(r"-?\d+(\.\d+)?", text):
        raise NotReplayable(f"final answer not a number: {text!r}")
    return Fraction(text)


def plan(question: str, answer: str) -> tuple[list[Literal], list[Step], list[list[tuple[str, Fraction]]], int]:
    """Check the chain and say where each step's numbers come from: ("q", value) or ("s", index of the step).
    The literals returned are the ones to enlarge (every quantity the question writes: a problem with one the
    chain does not use is dropped)."""
    (found, constants), chain = literals(question), steps(answer)
    arithmetic = outside_arithmetic(answer)
    if arithmetic is not None:
        raise NotReplayable(f"the solution computes outside its annotations: {arithmetic!r}")
    enlarged = {lit.value for lit in found}
    question_values = enlarged | constants
    sources: list[list[tuple[str, Fraction]]] = []
    for i, step in enumerate(chain):
        numbers = [Fraction(n) for n in _EXPR_NUMBER.findall(step.expr)]
        earlier = {s.value: j for j, s in enumerate(chain[:i])}
        origin = []
        for n in numbers:
            in_question, in_steps = n in question_values, n in earlier
            if sum(s.value == n for s in chain[:i]) > 1:
                raise NotReplayable(f"{n} in <<{step.expr}>> is the value of several earlier steps")
            if in_question == in_steps:
                raise NotReplayable(f"{n} in <<{step.expr}>> is {'both' if in_question else 'neither'} a question "
                                    "number and/nor an earlier result")
            if n in enlarged and n in constants:
                raise NotReplayable(f"{n} in <<{step.expr}>> is both a quantity and a fixed word or percentage")
            origin.append(("q", n) if in_question else ("s", Fraction(earlier[n])))
        if evaluate(step.expr, numbers) != step.value:
            raise NotReplayable(f"<<{step.expr}={step.value}>> does not recompute")
        sources.append(origin)
    used = Counter(x for origin in sources for kind, x in origin if kind == "q" and x in enlarged)
    written = Counter(lit.value for lit in found)
    for value, uses in used.items():
        if value in _LIKELY_CONSTANTS and uses > written[value]:
            raise NotReplayable(f"{value} is used {uses} times but written {written[value]}: a constant may wear "
                                "the question number's value")
    target = final_answer(answer)
    last = [i for i, s in enumerate(chain) if s.value == target]
    if not last:
        raise NotReplayable("the final answer is no step's value")
    feeding = {int(x) for origin in sources for kind, x in origin if kind == "s"}
    dead = [s for i, s in enumerate(chain[:last[-1]]) if i not in feeding]
    if dead:
        raise NotReplayable(f"<<{dead[0].expr}={dead[0].value}>> feeds no later step: the solution used its value "
                            "outside the annotations")
    unused = sorted({lit.value for lit in found} - set(used))
    if unused:  # a distractor, or a number the solution used in its head ("six tests" as 6 - 1 = 5)
        raise NotReplayable(f"the question's {unused[0]} is in no step")
    for value, uses in used.items():  # "three cups ... in three meals" with one 3 in the chain: one is in no step
        if uses < written[value]:
            raise NotReplayable(f"{value} is written {written[value]} times but used {uses}: one is in no step")
    if _ROUNDING.search(question):
        raise NotReplayable("the question asks for rounding, which its chain does not do")
    if hashlib.sha256(question.encode()).hexdigest()[:12] in GSM8K_ERRORS:
        raise NotReplayable("GSM8K's own solution is wrong")
    return [lit for lit in found if lit.value in used], chain, sources, last[-1]


def replay(chain: list[Step], sources: list[list[tuple[str, Fraction]]], new: dict[Fraction, Fraction]
           ) -> list[Fraction]:
    """Every step's value with the question's values replaced by `new` (missing ones kept)."""
    values: list[Fraction] = []
    for step, origin in zip(chain, sources, strict=True):
        numbers = [new.get(x, x) if kind == "q" else values[int(x)] for kind, x in origin]
        values.append(evaluate(step.expr, numbers))
    return values


def terminating(value: Fraction, max_places: int = 6) -> bool:
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1 and len(decimal(value).partition(".")[2]) <= max_places


def decimal(value: Fraction) -> str:
    """A terminating fraction as a plain decimal string (no exponent, no trailing zeros); any other as `p/q`, exact
    (a step of a chain may pass through a third)."""
    sign, value = ("-" if value < 0 else ""), abs(value)
    d = value.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d != 1:
        return f"{sign}{value.numerator}/{value.denominator}"
    whole, rest = divmod(value.numerator, value.denominator)
    places = ""
    while rest:
        rest *= 10
        digit, rest = divmod(rest, value.denominator)
        places += str(digit)
    return f"{sign}{whole}" + (f".{places}" if places else "")


def rebuild(question: str, answer: str, seed: int = 0, tries: int = 20) -> Problem:
    """The big-value version of one GSM8K problem, or NotReplayable saying why there is none."""
    found, chain, sources, answer_step = plan(question, answer)
    originals = sorted({lit.value for lit in found})
    places = {lit.value: lit.places for lit in found}
    rng = random.Random(int(hashlib.sha256(f"{seed}\0{question}".encode()).hexdigest()[:16], 16))
    for attempt in range(tries):
        # Half the draws are multiples of 720720 (every number up to 16 divides it), so that a chain that divides
        # by a small count ("shared among 3") still ends on a short decimal.
        step = 1 if attempt % 2 == 0 else 720720
        wholes = sorted(step * w for w in rng.sample(range(10**8 // step + 1, 10**11 // step), len(originals)))
        new = {v: Fraction(w) + (Fraction(rng.randint(1, 10 ** places[v] - 1), 10 ** places[v]) if places[v] else 0)
               for v, w in zip(originals, wholes, strict=True)}
        values = replay(chain, sources, new)
        if all(v > 0 for v, s in zip(values, chain, strict=True) if s.value > 0) and terminating(values[answer_step]):
            text, end = [], 0
            for lit in found:
                text += [question[end:lit.start], decimal(new[lit.value])]
                end = lit.end
            text.append(question[end:])
            replayed = []
            for step, origin, value in zip(chain, sources, values, strict=True):
                numbers = iter(decimal(new.get(x, x) if kind == "q" else values[int(x)]) for kind, x in origin)
                expr = _EXPR_NUMBER.sub(lambda _, numbers=numbers: next(numbers), step.expr)
                replayed.append((expr, decimal(value)))
            return Problem("".join(text), decimal(values[answer_step]),
                           {decimal(k): decimal(v) for k, v in new.items()}, tuple(replayed))
    raise NotReplayable(f"no draw in {tries} kept every result positive and the answer a short decimal")


def build(rows: Iterable[dict], seed: int = 0) -> Iterator[dict]:
    """Big-value rows (`prompt`, `answer`, `source`, the original and the mapping) for every replayable row."""
    for row in rows:
        try:
            problem = rebuild(row["question"], row["answer"], seed)
        except NotReplayable:
            continue
        yield {"prompt": problem.question, "answer": problem.answer, "source": "big-value-gsm8k",
               "original_question": row["question"], "original_answer": row["answer"].rsplit("####", 1)[-1].strip(),
               "mapping": json.dumps(problem.mapping)}


def audit_sheet(rows: list[dict], count: int, seed: int = 0, sample_seed: int = 0) -> str:
    """`count` kept problems drawn at random (by `sample_seed`) as a Markdown sheet for a person to read each new
    question against its answer: the original, the rebuilt question, the replayed chain and a verdict line."""
    kept = []
    for index, row in enumerate(rows):
        try:
            kept.append((index, row, rebuild(row["question"], row["answer"], seed)))
        except NotReplayable:
            continue
    # Ranked by a hash of the question, so a change to the rules keeps every still-kept problem of an earlier sheet.
    rank = sorted(range(len(kept)), key=lambda i: hashlib.sha256(f"{sample_seed}\0{kept[i][1]['question']}"
                                                                   .encode()).hexdigest())
    picks = sorted(rank[:count])
    lines = [f"{len(picks)} of {len(kept)} kept problems (big-value seed {seed}, sample seed {sample_seed}).", ""]
    for n, i in enumerate(picks, 1):
        index, row, problem = kept[i]
        chain = "; ".join(f"{expr} = {value}" for expr, value in problem.steps)
        gold = row["answer"].rsplit("####", 1)[-1].strip()
        lines += [f"## {n}. row {index}", "", f"- original: {row['question']}",
                  f"- original answer: {gold}", f"- rebuilt: {problem.question}",
                  f"- chain: {chain}", f"- answer: {problem.answer}", "- verdict: ", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m delegate.training.bigvalue", description=__doc__.split("\n\n")[0])
    parser.add_argument("gsm8k", help="a GSM8K JSONL file (question, answer with <<expr=value>> annotations)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--audit", type=int, metavar="N", help="write N random kept problems as a Markdown sheet "
                        "to read against their answers, instead of the data")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in Path(args.gsm8k).read_text().splitlines() if line.strip()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.audit:
        Path(args.out).write_text(audit_sheet(rows, args.audit, args.seed))
        print(f"{args.audit} problems to read -> {args.out}")
        return
    kept = list(build(rows, args.seed))
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in kept))
    print(f"{len(kept)} of {len(rows)} problems kept ({len(kept) / max(len(rows), 1):.1%}) -> {args.out}")


if __name__ == "__main__":
    main()
