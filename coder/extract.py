"""Pull one runnable program out of a model's reply.

Order: the last fenced block marked as Python, else the last fenced block of any kind, else an unterminated
fence's remainder, else the whole reply if it parses as Python and does something (not a bare name or number).
None when there is no code: the caller records that and hands the executor an empty program.
"""

from __future__ import annotations

import ast
import re
import textwrap

_FENCE = re.compile(r"^([ \t]*)(```|~~~)[ \t]*([\w+.-]*)[^\n]*\n(.*?)^[ \t]*\2[ \t]*$", re.MULTILINE | re.DOTALL)
_OPEN_FENCE = re.compile(r"^[ \t]*(```|~~~)[ \t]*([\w+.-]*)[^\n]*\n(.*)\Z", re.MULTILINE | re.DOTALL)
_PYTHON = {"python", "py", "python3", "py3"}


def extract_code(reply: str) -> str | None:
    """The program in `reply`, dedented and stripped, or None if the reply holds none."""
    reply = reply.replace("\r\n", "\n")
    blocks = [(lang.lower(), body) for _, _, lang, body in _FENCE.findall(reply)]
    python = [body for lang, body in blocks if lang in _PYTHON]
    if python:
        return _clean(python[-1])
    if blocks:
        return _clean(blocks[-1][1])
    unterminated = _OPEN_FENCE.search(reply)
    if unterminated and _does_something(_clean(unterminated.group(3)) or ""):
        return _clean(unterminated.group(3))
    stripped = reply.strip()
    return _clean(stripped) if _does_something(stripped) else None


def _clean(body: str) -> str | None:
    code = textwrap.dedent(body).strip("\n")
    return code if code.strip() else None


def _does_something(text: str) -> bool:
    """True if `text` parses as Python and has a statement other than a bare name or constant."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, (ast.Name, ast.Constant)))
               for node in tree.body)
