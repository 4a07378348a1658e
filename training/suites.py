"""Generated suites of tasks the planner never trained on, each with exact answers, its checker and a held-out split.

```python
from delegate.training.data import load_problems
load_problems("unseen:countdown", split="test", limit=100)    # one suite
load_problems("unseen", split="test", limit=500, seed=3)       # all five, interleaved
```

The seed claims that tool use learned on math carries over to other tasks; these suites measure it:
- `countdown`: reach a target from 3 or 4 given numbers with + - * / (each number at most once); the answer is an
  expression, graded by evaluating it exactly and counting the numbers it uses;
- `knights`: Knights and Knaves puzzles with 2 to 5 people and exactly one consistent assignment; the answer names
  every person's role;
- `letters`: how many times a letter occurs in a word or phrase ("how many r in strawberry");
- `compare`: which of two decimals or fractions is larger ("3.11 or 3.9"), the traps of digit-length included;
- `words`: long-digit arithmetic with the operands written in English words, the answer in digits.

Each problem has a `key`, its identity without surface details (CountDown's numbers and target, a puzzle's structure
without its names). The split is a hash of the key, so the held-out split (`test`, one key in five) and `train`
never share a problem, whatever the seeds of either; within a split keys do not repeat. A suite is deterministic
for (split, seed, size). Their references are plain strings (CountDown's "181 from 3, 7, 25, 50", a puzzle's
"Alice: knight, Bob: knave") that `grade` reads with the suite's checker (`training.suite_checks`); the numeric
suites' references are numbers that `rewards.answers_match` accepts as well.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from delegate.training import suite_checks

PREFIX = "unseen"
SPLITS = ("train", "test")
HELD_OUT_EVERY = 5  # one key in five is held out
DEFAULT_SIZE = 200  # problems per suite when no limit is given


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str  # the reference the suite's checker reads
    key: str  # the problem without surface details: splits and de-duplication read it
    solution: str = ""  # one right answer in the format asked for (the reference itself, except for CountDown)


@dataclass(frozen=True)
class Suite:
    name: str
    make: Callable[[random.Random], Problem]
    check: Callable[[str, str], bool]  # (reference, predicted) -> right


def split_of(key: str) -> str:
    """`test` for one key in `HELD_OUT_EVERY` (by a stable hash), else `train`."""
    return "test" if int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) % HELD_OUT_EVERY == 0 else "train"


# --- CountDown ----------------------------------------------------------------------------------------------

def _countdown(rng: random.Random) -> Problem:
    while True:
        numbers = [rng.randint(1, 10) for _ in range(rng.choice((3, 4, 4)))]
        if rng.random() < 0.5:
            numbers[0] = rng.choice((25, 50, 75, 100))
        rng.shuffle(numbers)
        pool = [(n, str(n)) for n in rng.sample(numbers, rng.randint(max(2, len(numbers) - 1), len(numbers)))]
        while len(pool) > 1:
            (a, ea), (b, eb) = pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))
            a, ea, b, eb = (a, ea, b, eb) if a >= b else (b, eb, a, ea)
            # Every step stays a positive integer and changes something (no "- itself", "* 1", "/ 1").
            op = rng.choice(["+"] + ["-"] * (a != b) + ["*"] * (b > 1) + ["/"] * (b > 1 and a % b == 0))
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a // max(b, 1)}[op]
            pool.append((value, f"({ea} {op} {eb})"))
        target, expression = pool[0]
        if 10 <= target <= 999 and target not in numbers:
            given = ", ".join(map(str, numbers))
            prompt = (f"Using the numbers {given}, each at most once, and the operations +, -, * and / (with "
                      f"parentheses as needed), write an expression that equals {target}. Give the expression, "
                      "not its value, in \\boxed{}.")
            return Problem(prompt, f"{target} from {given}", f"{sorted(numbers)}->{target}", expression[1:-1])


# --- Knights and Knaves -----------------------------------------------------------------------------------

NAMES = ("Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Hector", "Irene", "Jonas", "Kira", "Liam",
         "Mona", "Nadia", "Oscar", "Paula", "Quentin", "Rosa", "Sven", "Tara")

Statement = tuple[Any, ...]  # ("is", i, knight) | ("both", i, j, knight) | ("one", i, j, knight) | ("same", i, j)
#                              | ("differ", i, j) | ("count", k, knight): about people by index


def holds(statement: Statement, world: tuple[bool, ...]) -> bool:
    """Whether `statement` is true when `world[i]` says whether person i is a knight."""
    kind = statement[0]
    if kind == "is":
        return world[statement[1]] == statement[2]
    if kind == "both":
        return world[statement[1]] == statement[3] and world[statement[2]] == statement[3]
    if kind == "one":
        return world[statement[1]] == statement[3] or world[statement[2]] == statement[3]
    if kind == "same":
        return world[statement[1]] == world[statement[2]]
    if kind == "differ":
        return world[statement[1]] != world[statement[2]]
    return sum(world) == statement[1] if statement[2] else len(world) - sum(world) == statement[1]


def consistent_worlds(statements: list[Statement]) -> list[tuple[bool, ...]]:
    """Every assignment in which each knight's statement is true and each knave's false."""
    return [world for world in itertools.product((True, False), repeat=len(statements))
            if all(holds(s, world) == world[i] for i, s in enumerate(statements))]


def _say(statement: Statement, names: list[str], speaker: int) -> str:
    kind, role = statement[0], "knight" if statement[-1] is True else "knave"
    if kind in ("same", "differ") and speaker in statement[1:3]:
        other = names[statement[1] if statement[2] == speaker else statement[2]]
        return f"{other} and I are {'the same kind' if kind == 'same' else 'different kinds'}."
    if kind == "is":
        return f"{names[statement[1]]} is a {role}."
    if kind == "both":
        return f"{names[statement[1]]} and {names[statement[2]]} are both {role}s."
    if kind == "one":
        return f"At least one of {names[statement[1]]} and {names[statement[2]]} is a {role}."
    if kind == "same":
        return f"{names[statement[1]]} and {names[statement[2]]} are the same kind."
    if kind == "differ":
        return f"{names[statement[1]]} and {names[statement[2]]} are different kinds."
    count = statement[1]
    return f"Exactly {count} of us {f'is a {role}' if count == 1 else f'are {role}s'}."


def _statement(rng: random.Random, speaker: int, n: int) -> Statement:
    others = [i for i in range(n) if i != speaker]
    kind = rng.choice(["is", "is", "count", "same", "differ"] + (["both", "one"] if len(others) >= 2 else []))
    if kind == "is":
        return ("is", rng.choice(others), rng.random() < 0.5)
    if kind == "count":
        return ("count", rng.randint(1, n - 1), rng.random() < 0.5)
    # "same" and "differ" may be about the speaker ("Bob and I are the same kind"): two-person puzzles need them.
    i, j = sorted(rng.sample(others if kind in ("both", "one") else range(n), 2))
    return (kind, i, j, rng.random() < 0.5) if kind in ("both", "one") else (kind, i, j)


def _knights(rng: random.Random) -> Problem:
    while True:
        n = rng.randint(2, 5)
        statements = [_statement(rng, speaker, n) for speaker in range(n)]
        worlds = consistent_worlds(statements)
        if len(worlds) == 1:
            break
    names = rng.sample(NAMES, n)
    lines = "\n".join(f'{names[i]} says: "{_say(s, names, i)}"' for i, s in enumerate(statements))
    listed = ", ".join(names[:-1]) + f" and {names[-1]}"
    prompt = ("On an island every inhabitant is either a knight, who always tells the truth, or a knave, who always "
              f"lies. You meet {n} inhabitants: {listed}.\n{lines}\nWho is a knight and who is a knave? Give "
              "every person's role in \\boxed{}, as in \\boxed{Name: knight, Name: knave}.")
    answer = ", ".join(f"{name}: {'knight' if role else 'knave'}" for name, role in zip(names, worlds[0],
                                                                                       strict=True))
    return Problem(prompt, answer, repr(statements))


# --- letter counting --------------------------------------------------------------------------------------

WORDS = ("strawberry", "raspberry", "blueberry", "mississippi", "bookkeeper", "committee", "necessary", "occurrence",
         "embarrass", "parallel", "banana", "assessment", "possession", "balloon", "coffee", "letter", "pepper",
         "success", "address", "millennium", "accommodate", "broccoli", "cinnamon", "tomorrow", "referee", "giraffe",
         "hippopotamus", "peppermint", "character", "difference", "independence", "intelligence", "programming",
         "computer", "keyboard", "umbrella", "elephant", "butterfly", "chocolate", "pineapple", "watermelon",
         "grasshopper", "kangaroo", "mammal", "llama", "nonsense", "assassin", "tennessee", "massachusetts",
         "connecticut", "rhythm", "syzygy", "onomatopoeia", "bureaucracy", "entrepreneur", "questionnaire",
         "miscellaneous", "conscientious", "refrigerator", "abracadabra", "lollipop", "bubble", "puzzle", "jazz",
         "pizzazz", "zigzag", "mirror", "error", "barrier", "terrier", "cherry", "carrot", "sorrow", "arrow",
         "horror", "current", "corridor", "territory", "irregular", "observatory", "strategy", "library",
         "february", "extraordinary", "photosynthesis", "parliament", "restaurant", "vacuum", "banana split",
         "deep learning", "large language model", "reinforcement", "tokenizer", "gradient", "algorithm",
         "probability", "statistics", "mathematics", "geometry", "calculus", "triangle", "hexagon", "sequence")


def _letters(rng: random.Random) -> Problem:
    phrase = " ".join(rng.sample(WORDS, rng.choice((1, 1, 1, 2, 3))))
    letters = [c for c in phrase if c.isalpha()]
    absent = [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in phrase]
    # Mostly a letter of the phrase, drawn by frequency (letters that repeat are asked about more often).
    letter = rng.choice(absent) if absent and rng.random() < 0.1 else rng.choice(letters)
    count = phrase.count(letter)
    prompt = (f'How many times does the letter "{letter}" appear in "{phrase}"? Give the number in \\boxed{{}}.')
    return Problem(prompt, str(count), f"{phrase}|{letter}")


# --- decimal and fraction comparison ----------------------------------------------------------------------

def _decimal(rng: random.Random) -> tuple[str, str]:
    """Two decimals with the same whole part where digit length misleads: 3.9 against 3.11 (or 3.95)."""
    whole = rng.choice((0, 1, 2, 3, 5, 7, 9, 9, 10, 12, 99, 2024))
    short = rng.randint(1, 9)
    while True:
        longer = rng.randint(10, 99) if rng.random() < 0.7 else rng.randint(100, 999)
        if Fraction(f"0.{longer}") != Fraction(short, 10):
            return f"{whole}.{short}", f"{whole}.{longer}"


def _fraction(rng: random.Random) -> str:
    q = rng.randint(2, 19)
    return f"{rng.randint(1, q - 1) + q * rng.choice((0, 0, 0, 1))}/{q}"


def _compare(rng: random.Random) -> Problem:
    while True:
        kind = rng.choice(("decimal", "decimal", "fraction", "mixed"))
        if kind == "decimal":
            a, b = _decimal(rng)
        elif kind == "fraction":
            a, b = _fraction(rng), _fraction(rng)
        else:
            a, b = _fraction(rng), f"{rng.randint(0, 1)}.{rng.randint(1, 99):02d}".rstrip("0")
        va, vb = Fraction(a), Fraction(b)
        if va != vb and abs(va - vb) <= Fraction(1, 5):  # close pairs: the ones worth computing
            break
    first, second = (a, b) if rng.random() < 0.5 else (b, a)
    prompt = (f"Which is larger, {first} or {second}? Give the larger number, written as in the question, in "
              "\\boxed{}.")
    return Problem(prompt, a if va > vb else b, "|".join(sorted((a, b))))


# --- long-digit arithmetic in words -----------------------------------------------------------------------

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))


def in_words(n: int) -> str:
    """A non-negative integer in English words: 3_040_012 is 'three million, forty thousand, twelve'."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")
    if n < 1000:
        return f"{_ONES[n // 100]} hundred" + (f" {in_words(n % 100)}" if n % 100 else "")
    for scale, name in _SCALES:
        if n >= scale:
            rest = n % scale
            return f"{in_words(n // scale)} {name}" + (f", {in_words(rest)}" if rest else "")
    raise AssertionError(n)


def _words(rng: random.Random) -> Problem:
    op = rng.choice(("plus", "minus", "times"))
    digits = (rng.randint(4, 7), rng.randint(3, 6)) if op == "times" else (rng.randint(6, 10), rng.randint(5, 9))
    a, b = (rng.randint(10 ** (d - 1), 10**d - 1) for d in digits)
    if op == "minus" and a < b:
        a, b = b, a
    value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    prompt = (f"What is {in_words(a)} {op} {in_words(b)}? Give the result in digits in \\boxed{{}}.")
    key = f"{min(a, b)}{op}{max(a, b)}" if op != "minus" else f"{a}{op}{b}"
    return Problem(prompt, str(value), key)


# --- the registry and the loader --------------------------------------------------------------------------

SUITES: dict[str, Suite] = {
    "countdown": Suite("countdown", _countdown, suite_checks.countdown),
    "knights": Suite("knights", _knights, suite_checks.knights),
    "letters": Suite("letters", _letters, suite_checks.same_number),
    "compare": Suite("compare", _compare, suite_checks.same_number),
    "words": Suite("words", _words, suite_checks.same_number),
}


def generate(name: str, split: str = "test", n: int = DEFAULT_SIZE, seed: int = 0) -> list[Problem]:
    """`n` distinct problems of suite `name` in `split`, the same for the same arguments."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    if split not in SPLITS:
        raise ValueError(f"suite {name}: split {split!r}; a suite has {' and '.join(SPLITS)}")
    rng = random.Random(f"{name}/{seed}")  # a string seed is hashed with SHA-512: the same in every process
    seen: set[str] = set()
    problems: list[Problem] = []
    for _ in range(200 * n + 1000):
        if len(problems) == n:
            return problems
        problem = SUITES[name].make(rng)
        if problem.key not in seen and split_of(problem.key) == split:
            seen.add(problem.key)
            problems.append(problem)
    if len(problems) == n:
        return problems
    raise ValueError(f"suite {name}: only {len(problems)} distinct {split} problems found, {n} asked for")


def names_of(source: str) -> list[str]:
    """The suites a source name asks for: `unseen` (all), `unseen:countdown`, `unseen:letters,compare`."""
    head, _, tail = source.partition(":")
    if head != PREFIX:
        raise ValueError(f"{source!r} is not a suite source (unseen or unseen:NAME[,NAME])")
    names = [n.strip() for n in tail.split(",") if n.strip()] if tail else list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown or not names:
        raise ValueError(f"{source!r}: unknown suite {unknown[0] if unknown else '(none)'!r}; known: "
                         f"{', '.join(SUITES)}")
    return names


def is_suite_source(name: str) -> bool:
    return name == PREFIX or name.startswith(PREFIX + ":")


def rows(source: str, split: str = "test", limit: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """The problems of `source` as `prompt`/`answer`/`source` rows, the suites interleaved one problem at a time
    so that any `limit` keeps them balanced; `source` of each row is `unseen/<suite>`."""
    names = names_of(source)
    size = -(-limit // len(names)) if limit else DEFAULT_SIZE
    per_suite = [generate(name, split, size, seed) for name in names]
    out = [{"prompt": p.prompt, "answer": p.answer, "source": f"{PREFIX}/{name}"}
           for group in itertools.zip_longest(*per_suite) for name, p in zip(names, group, strict=True) if p]
    return out[:limit] if limit else out


def grade(reference: str | None, predicted: str | None, source: str | None = None) -> bool:
    """Whether `predicted` answers a problem with `reference`: by its suite's checker for a suite's source
    (`unseen/<suite>`), else by `rewards.answers_match`."""
    if reference is None or predicted is None:
        return False
    suite = suite_of(source)
    if suite is not None:
        return suite.check(reference, predicted)
    from delegate.training.rewards import answers_match

    return answers_match(reference, predicted)


def suite_of(source: str | None) -> Suite | None:
    if source and source.startswith(PREFIX + "/"):
        return SUITES.get(source.split("/", 1)[1])
    return None


def sources(names: Iterable[str] = SUITES) -> list[str]:
    return [f"{PREFIX}/{name}" for name in names]
