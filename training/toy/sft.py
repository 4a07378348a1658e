"""Warm-up data and SFT for the toy world's coder and planner.

The transcripts are built from the same pieces the engine uses at run time (the protocol's chat prompt and
markers, the sandbox result's rendering), each piece tokenized on its own as the engine does, so SFT teaches the
token sequences that rollouts will produce. The loss covers only what the model itself writes: the coder's reply;
the planner's calls and answer, never the prompt nor the inserted results (as in GRPO).
"""

from __future__ import annotations

import logging
import random
import re
from decimal import Decimal
from typing import Any

from delegate.executor import ExecutionResult
from delegate.planner.protocols import CODE_TAGS, Markers, Protocol
from delegate.training.sft import Example, train  # noqa: F401  (the toy's SFT uses the planner's)
from delegate.training.toy.tasks import Problem

log = logging.getLogger(__name__)
_NUMBER = re.compile(r"[0-9.]+")



# The toy coder's program: the request copied verbatim into a fixed frame that evaluates it exactly (every number
# literal becomes a `Decimal`, whose 28 digits hold every toy answer). Copying verbatim is what a tiny model can
# learn quickly; rewriting each literal is not.
def toy_markers(mode: str) -> Markers | None:
    """The toy world's call markers: the defaults, except `<code>` tags in code mode (its tiny planners are trained
    on them; `training/recipes/toy-code.yaml` names the same)."""
    return CODE_TAGS if mode == "code" else None


PROGRAM = """from decimal import Decimal
import re
print(eval(re.sub(r"[0-9.]+", lambda m: "Decimal('" + m[0] + "')", "{expression}")))"""


def program(expression: str) -> str:
    """The program the toy coder is taught to write for `expression`."""
    return PROGRAM.format(expression=expression)


def printed(expression: str) -> str:
    """What `program(expression)` prints: the same evaluation, here (our own generated arithmetic, no sandbox)."""
    literals = _NUMBER.sub(lambda m: f"Decimal('{m[0]}')", expression)
    return str(eval(literals, {"__builtins__": {}, "Decimal": Decimal}))


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def coder_example(tokenizer: Any, system_prompt: str, expression: str) -> Example:
    """One (request -> program) pair in the coder's chat format; the loss covers the reply and its end token."""
    conversation = [{"role": "system", "content": system_prompt}, {"role": "user", "content": expression}]
    prompt = encode(tokenizer, tokenizer.apply_chat_template(conversation, add_generation_prompt=True,
                                                             tokenize=False))
    reply = [*encode(tokenizer, f"```python\n{program(expression)}\n```"), tokenizer.eos_token_id]
    return Example(prompt + reply, [0] * len(prompt) + [1] * len(reply))


def planner_example(tokenizer: Any, protocol: Protocol, system_prompt: str, problem: Problem,
                    delegate: bool, max_result_chars: int = 1000) -> Example:
    """A transcript that delegates (call, inserted result, the result copied into the box) or answers from its
    head. Inserted result tokens are out of the loss."""
    ids = encode(tokenizer, protocol.prompt_text(tokenizer, system_prompt, problem.question))
    mask = [0] * len(ids)

    def add(text: str, trained: bool) -> None:
        piece = encode(tokenizer, text)
        ids.extend(piece)
        mask.extend([int(trained)] * len(piece))

    m = protocol.markers
    answer = problem.answer
    if delegate:
        body = problem.expression if protocol.name == "request" else f"\n{program(problem.expression)}\n"
        add(f"{m.open}{body}{m.close}", trained=True)
        answer = printed(problem.expression)
        rendered = ExecutionResult(status="ok", stdout=answer + "\n").render(max_result_chars)
        add(protocol.render_result(rendered), trained=False)
    add(f"\\boxed{{{answer}}}", trained=True)
    ids.append(tokenizer.eos_token_id)
    mask.append(1)
    return Example(ids, mask)


def planner_examples(tokenizer: Any, protocol: Protocol, system_prompt: str, problems: list[Problem],
                     delegate_share: float, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    return [planner_example(tokenizer, protocol, system_prompt, p, rng.random() < delegate_share) for p in problems]


_PREFIXES = ["print(", '"', "x = ", "<request>", "(", ""]


def _number(rng: random.Random, digits_range: tuple[int, int]) -> str:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(*digits_range)))
    if rng.random() < 0.25:
        cut = rng.randint(1, len(digits) - 1)
        digits = f"{digits[:cut]}.{digits[cut:]}"
    return digits


def copy_examples(tokenizer: Any, words: list[str], n: int, seed: int = 0,
                  digits: tuple[int, int] = (6, 12)) -> list[Example]:
    """Pre-training for copying, the skill every toy model needs and tiny models are slow to find in the real
    transcripts. Half the examples are a few words with one to three numbers among them (digits one per token,
    some decimals), then `=` and the numbers again, in order; half are an expression (numbers, operators,
    parentheses), then a short code-like prefix and the expression verbatim. Numbers have `digits` digits (toy answers
    reach 20 digits, and a model copies reliably only the lengths it has seen). Short sequences, so a copy mechanism
    forms in a few hundred steps."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        if rng.random() < 0.5:
            numbers = [_number(rng, digits) for _ in range(rng.randint(1, 3))]
            source = " ".join(" ".join(rng.choices(words, k=rng.randint(1, 4))) + f" {x}" for x in numbers)
            prompt, target = f"{source} =", " " + " ".join(numbers)
        else:
            expression = _number(rng, digits)
            for _ in range(rng.randint(0, 3)):
                op = rng.choice(["+", "-", "*", "//"])
                expression = f"({expression}) {op} {_number(rng, digits)}" if rng.random() < 0.3 else \
                    f"{expression} {op} {_number(rng, digits)}"
            prompt = expression + "\n" + rng.choice(_PREFIXES)
            target = expression
        prompt_ids, target_ids = encode(tokenizer, prompt), encode(tokenizer, target)
        examples.append(Example(prompt_ids + target_ids, [0] * len(prompt_ids) + [1] * len(target_ids)))
    return examples
