"""The checkers of the generated suites (`training.suites`): `check(reference, predicted) -> bool`, exact.

`predicted` is what the planner boxed, so each checker first strips the LaTeX a model puts around an answer
(`\\text{}`, `$`, `\\times`, `\\frac{a}{b}`, thin spaces). They are strict where leniency would hide a wrong
answer and lenient only in notation:
- `countdown`: the expression (optionally followed by `= target`) is parsed as Python arithmetic (integers, + - * /,
  parentheses; no unary minus, no powers), evaluated with exact fractions (so intermediate fractions are allowed),
  and must equal the target while using each given number at most as often as it is given;
- `knights`: every person named in the reference must get exactly one role ("Alice: knight, Bob: knave", "Alice is
  a knight and Bob is a knave", "Alice and Carol are knights", "Knights: Alice; knaves: Bob"), and all roles must
  match; an answer with a negation ("not a knight") is refused rather than guessed at;
- `same_number`: the answer holds exactly one number (a decimal, `a/b` or `\\frac{a}{b}`, thousands separators
  allowed) equal in value to the reference, so "3.90" answers "3.9" and "6/14" answers "3/7".
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mathbf|operatorname)\{([^{}]*)\}")
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_NUMBER = re.compile(r"(?<![\w.])[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?(?![\w.])")


def plain(text: str) -> str:
    """`text` without the LaTeX wrapping a boxed answer carries; operators as Python writes them."""
    text = _TEXT.sub(r"\1", text)
    while _FRAC.search(text):
        text = _FRAC.sub(r"(\1)/(\2)", text)
    for latex, python in (("\\times", "*"), ("\\cdot", "*"), ("×", "*"), ("·", "*"), ("\\div", "/"), ("÷", "/"),
                          ("−", "-"), ("\\left", ""), ("\\right", ""), ("{,}", ","), ("\\,", ""), ("\\!", ""),
                          ("\\ ", " "), ("$", ""), ("\\", "")):
        text = text.replace(latex, python)
    return text.replace("{", "(").replace("}", ")").strip()


# --- CountDown ------------------------------------------------------------------------------------------

_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}


def _value(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left, used), _value(node.right, used))
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
        used.append(node.value)
        return Fraction(node.value)
    raise ValueError(f"not allowed in a CountDown expression: {ast.dump(node)[:60]}")


def expression_value(expression: str) -> tuple[Fraction, list[int]] | None:
    """The exact value of an arithmetic expression and the numbers it uses, or None when it is not one."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        used: list[int] = []
        return _value(tree.body, used), used
    except (SyntaxError, ValueError, ZeroDivisionError):
        return None


def countdown_reference(reference: str) -> tuple[int, list[int]]:
    """(target, numbers) of a reference such as '181 from 3, 7, 25, 50'."""
    target, _, numbers = reference.partition(" from ")
    return int(target), [int(n) for n in numbers.split(",")]


def countdown(reference: str, predicted: str) -> bool:
    target, numbers = countdown_reference(reference)
    parts = [p.strip() for p in plain(predicted).split("=")]
    if len(parts) > 2 or (len(parts) == 2 and parts[1] != str(target)):
        return False
    found = expression_value(parts[0])
    if found is None:
        return False
    value, used = found
    return value == target and not Counter(used) - Counter(numbers)


# --- Knights and Knaves ------------------------------------------------------------------------------

_ROLES = {"knight": True, "knights": True, "knave": False, "knaves": False}


def knights_reference(reference: str) -> dict[str, bool]:
    """{name: is a knight} of a reference such as 'Alice: knight, Bob: knave'."""
    pairs = (item.split(":") for item in reference.split(","))
    return {name.strip(): _ROLES[role.strip()] for name, role in pairs}


def roles(text: str, names: list[str]) -> dict[str, bool] | None:
    """{name: is a knight} read from an answer, or None when a name gets two roles or the answer negates.

    Names before a role word take that role ("Alice and Carol are knights"); when the answer starts with a role
    word, that word heads the names after it ("Knights: Alice, Carol; knaves: Bob")."""
    text = plain(text)
    if re.search(r"\bnot\b|n't\b|\bneither\b|\bnor\b", text, re.I):
        return None
    lookup = {name.lower(): name for name in names}
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", text) if w.lower() in lookup or w.lower() in _ROLES]
    found: dict[str, bool] = {}

    def give(name: str, role: bool) -> bool:
        return found.setdefault(name, role) == role

    heads = bool(words) and words[0] in _ROLES
    pending: list[str] = []
    head: bool | None = None
    for word in words:
        if word in _ROLES:
            if heads:
                head = _ROLES[word]
            elif not all(give(name, _ROLES[word]) for name in pending):
                return None
            pending = []
        elif heads:
            if head is None or not give(lookup[word], head):
                return None
        else:
            pending.append(lookup[word])
    return found


def knights(reference: str, predicted: str) -> bool:
    truth = knights_reference(reference)
    return roles(predicted, list(truth)) == truth


# --- one number ----------------------------------------------------------------------------------------

def numbers_in(text: str) -> list[Fraction]:
    """Every number written in `text` (decimals, `a/b`, thousands separators), as exact fractions."""
    values = []
    for match in _NUMBER.finditer(plain(text).replace("(", "").replace(")", "")):
        token = match.group().replace(",", "").replace(" ", "")
        try:
            values.append(Fraction(token))
        except (ValueError, ZeroDivisionError):
            continue  # "3/0" is no number: the answer is then judged on the others
    return values


def same_number(reference: str, predicted: str) -> bool:
    values = set(numbers_in(predicted))
    return len(values) == 1 and values.pop() == Fraction(reference)
