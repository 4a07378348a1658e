"""Code extraction from the reply shapes models actually produce."""

from __future__ import annotations

import pytest

from delegate.coder import extract_code

CASES = {
    "fenced python": ("```python\nprint(1)\n```", "print(1)"),
    "fenced py": ("```py\nprint(2)\n```", "print(2)"),
    "fenced python3 with attributes": ("```python3 title=x.py\nprint(3)\n```", "print(3)"),
    "fenced without language": ("```\nprint(4)\n```", "print(4)"),
    "tilde fence": ("~~~python\nprint(5)\n~~~", "print(5)"),
    "prose around": ("Here is the program:\n```python\nx = 6\nprint(x)\n```\nIt prints 6.", "x = 6\nprint(x)"),
    "several python blocks, last wins": ("```python\nprint('draft')\n```\nBetter:\n```python\nprint('final')\n```",
                                         "print('final')"),
    "python block preferred over a later shell block": ("```python\nprint(8)\n```\nRun it:\n```bash\npython x.py\n```",
                                                        "print(8)"),
    "only a non-python block": ("Output:\n```text\nprint(9)\n```", "print(9)"),
    "unterminated fence": ("```python\nimport math\nprint(math.lcm(38, 16))", "import math\nprint(math.lcm(38, 16))"),
    "indented fence in a list item": ("1. Run:\n   ```python\n   for i in range(2):\n       print(i)\n   ```",
                                      "for i in range(2):\n    print(i)"),
    "bare code, no fence": ("import math\nprint(math.factorial(20))", "import math\nprint(math.factorial(20))"),
    "bare single call": ("print(2**100)", "print(2**100)"),
    "fence with trailing spaces": ("```python   \nprint(14)\n```   ", "print(14)"),
    "windows newlines inside": ("```python\r\nprint(15)\r\n```", "print(15)"),
    "fence with leading blank lines in body": ("```python\n\n\nprint(16)\n\n```", "print(16)"),
}

NO_CODE = {
    "prose only": "The least common multiple of 38 and 16 is 304.",
    "empty reply": "",
    "whitespace": "   \n\t  ",
    "a bare number": "304",
    "a bare word": "Sure",
    "empty fence": "```python\n```",
    "broken unterminated fence with prose": "```python\nthis is not code at all",
}


@pytest.mark.parametrize("reply, expected", CASES.values(), ids=CASES.keys())
def test_extracts_the_program(reply, expected):
    assert extract_code(reply) == expected


@pytest.mark.parametrize("reply", NO_CODE.values(), ids=NO_CODE.keys())
def test_no_code_is_none(reply):
    assert extract_code(reply) is None
