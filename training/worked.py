"""Worked demonstrations for a warm start: GSM8K's annotated solutions, replayed through the real engine.

Rejection sampling (`training.sft`) keeps the starting policy's right answers that delegated. In request mode the
real 0.5B has none: of 3,072 rollouts sampled on plain GSM8K train on the H200, 397 were right and 105 made a
call, and no rollout did both (bench/results/gpu-real-grpo.md). GSM8K's worked answers annotate every calculation
(`48/2 = <<48/2=24>>24`), and big-value GSM8K replays that chain with 9- to 11-digit numbers
(`training.bigvalue`). Here each annotated step becomes a call the planner writes (`Compute 48/2` in request mode,
`print(48/2)` in code mode) after the solution's own words: `Demonstrations`, a generation backend, writes the
planner's side, and the recipe's own coder and sandbox answer each call through the engine. So every inserted
result is one training would see, and the tokens are laid out as a GRPO rollout lays them out (results masked).
A demonstration is kept only where every result is the step's value and the answer is right; the records feed
`training.sft`:

    python -m delegate.training.worked --config training/recipes/qwen2.5-0.5b-request.yaml --limit 256 \\
        --out runs/worked-request.jsonl [--set SECTION.FIELD=VALUE ...]
    python -m delegate.training.sft --config training/recipes/qwen2.5-0.5b-request.yaml \\
        --records runs/worked-request.jsonl --out runs/sft-request

The problems are the recipe's data (`data.path`, a GSM8K-schema JSONL file; `data.big_values`, `data.seed`), the
first `--limit` whose chain replays. The words around a call are the solution's, with the expression itself left
to the call and the question's numbers and each step's value replaced by their big values.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delegate.planner.generation import Generated
from delegate.training import bigvalue

log = logging.getLogger("delegate.training.worked")

_PROSE_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?![\w])")
# "48/2 = $" or "0.2 x 50 = " before an annotation ("x" only as a word: "a box = " keeps its box)
_EXPRESSION_BEFORE = re.compile(r"(?:[\d.+\-*/()$ ]|(?<=\d),(?=\d)| x(?= ))*=\s*\$?\s*$")


@dataclass(frozen=True)
class Worked:
    question: str
    answer: str
    steps: tuple[tuple[str, str], ...]  # each calculation's expression and value
    prose: tuple[str, ...]  # the solution's words before each step, and after the last (one more than steps)
    called: tuple[bool, ...]  # per step: a call (True) or written out in the words

    @property
    def calls(self) -> tuple[tuple[str, str], ...]:
        """The steps the planner delegates, in order."""
        return tuple(step for i, step in enumerate(self.steps) if self.called[i])


def worked(row: dict[str, str], big_values: bool, seed: int, inline_below: float = 0) -> Worked:
    """One GSM8K row (question, answer with `<<expr=value>>`) as a demonstration's parts; NotReplayable if its
    chain cannot be read (or, with big values, replayed), or a step's value is no decimal of at most 6 places.

    A step whose value and every number of its expression are below `inline_below` in size is written out in the
    words (`48/2 = 24`), as a planner works out what needs no computing, rather than called; 0: every step called."""
    solution = row["answer"].rsplit("####", 1)[0]
    original = bigvalue.steps(row["answer"])
    if big_values:
        problem = bigvalue.rebuild(row["question"], row["answer"], seed)
        question, answer, steps = problem.question, problem.answer, problem.steps
        numbers = {Fraction(k): v for k, v in problem.mapping.items()}
        for step, (_, value) in zip(original, steps, strict=True):
            numbers.setdefault(step.value, value)  # the question's numbers first, then each step's value
    else:
        question, answer = row["question"], bigvalue.decimal(bigvalue.final_answer(row["answer"]))
        steps = tuple((step.expr, bigvalue.decimal(step.value)) for step in original)
        numbers = {}
    if not all(bigvalue.terminating(Fraction(value)) for _, value in steps):
        raise bigvalue.NotReplayable("a step's value is no short decimal: no program prints it exactly")
    pieces = bigvalue._STEP.split(solution)[::3]  # the words between annotations (split keeps 2 groups each)
    prose = [_PROSE_NUMBER.sub(lambda m: _renumber(m.group(0), numbers), piece) for piece in pieces]
    prose = [_spaced(_EXPRESSION_BEFORE.sub("", text)) if i < len(steps) else text for i, text in enumerate(prose)]
    called = tuple(not _small(expr, value, inline_below) for expr, value in steps)
    return Worked(question, answer, steps, tuple(prose), called)


def _small(expr: str, value: str, below: float) -> bool:
    numbers = [Fraction(n) for n in bigvalue._EXPR_NUMBER.findall(expr)] + [Fraction(value)]
    return all(abs(n) < below for n in numbers)


def _spaced(text: str) -> str:
    """Words before a call end with one space (none after a newline or at the start)."""
    stripped = text.rstrip(" ")
    return stripped if not stripped or stripped.endswith("\n") else stripped + " "


def _renumber(text: str, numbers: dict[Fraction, str]) -> str:
    try:
        return numbers.get(Fraction(text.replace(",", "")), text)
    except ValueError:
        return text


def segments(demo: Worked, protocol: Any) -> list[str]:
    """The planner's text in rounds: each ends with a call; the last ends with the boxed answer. A step written
    out (`Worked.called`) stays in the words of the round it falls in."""
    markers = protocol.markers
    parts, text = [], ""
    for i, (expr, value) in enumerate(demo.steps):
        if not demo.called[i]:  # the next words mostly open with the value ("24 clips")
            text += f"{demo.prose[i]}{expr} = {'' if _opens_with(demo.prose[i + 1], value) else value}"
            continue
        call = f"Compute {expr}" if protocol.uses_coder else f"print({expr})"
        parts.append(f"{text}{demo.prose[i]}{markers.open}{call}{markers.close}")
        text = ""
    return [*parts, f"{text}{demo.prose[-1].rstrip()}\nThe answer is \\boxed{{{demo.answer}}}."]


def _opens_with(words: str, value: str) -> bool:
    first = _PROSE_NUMBER.match(words)
    return first is not None and _number(first.group(0)) == Fraction(value)


class Demonstrations:
    """A generation backend that writes given text: each prompt's next segment, tokenized on its own (logprobs
    0). Prompts are told apart by their token ids, so each question appears once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.scripts: dict[tuple[int, ...], list[str]] = {}
        self.given: Counter[tuple[int, ...]] = Counter()

    def add(self, prompt_ids: list[int], texts: list[str]) -> None:
        self.scripts[tuple(prompt_ids)] = texts

    def generate(self, prompts: list[list[int]], budgets: list[int], stop_strings: list[str]) -> list[Generated]:
        lengths = sorted({len(key) for key in self.scripts})
        out = []
        for ids, budget in zip(prompts, budgets, strict=True):
            key = next((tuple(ids[:n]) for n in lengths if tuple(ids[:n]) in self.scripts), None)
            if key is None:
                raise KeyError("a prompt with no demonstration")
            texts, i = self.scripts[key], self.given[key]
            self.given[key] += 1
            if i >= len(texts):  # the engine asked for more than the script holds: end the rollout
                out.append(Generated([], [], "eos"))
                continue
            tokens = self.tokenizer(texts[i], add_special_tokens=False)["input_ids"]
            stop = "stop" if i < len(texts) - 1 else "eos"
            if len(tokens) > budget:
                tokens, stop = tokens[:budget], "length"
            out.append(Generated(tokens, [0.0] * len(tokens), stop))
        return out


def _number(text: str) -> Fraction | None:
    """The exact value of a printed number ("93335836177.5000", "1,234"), None for anything else."""
    try:
        return Fraction(Decimal(text.strip().replace(",", "")))
    except (InvalidOperation, ValueError, OverflowError):  # not a numeral; NaN; infinity
        return None


def why_dropped(trajectory: Any, demo: Worked) -> str | None:
    """Why a replayed demonstration is not kept (None: it is)."""
    from delegate.training.rewards import answers_match

    if len(trajectory.tool_calls) != len(demo.calls):
        return "not every step was called"
    for call, (_, value) in zip(trajectory.tool_calls, demo.calls, strict=True):
        if call.result.status != "ok":
            return f"a call ended {call.result.status}"
        if _number(call.result.stdout) != Fraction(value):
            return "a result is not the step's value (as one number)"
    if trajectory.violations:
        return f"violation {trajectory.violations[0]}"
    if not answers_match(demo.answer, trajectory.answer):
        return "wrong answer"
    return None


def rows_of(path: str, limit: int | None, big_values: bool, seed: int, inline_below: float = 0) -> list[Worked]:
    """The first `limit` demonstrations that the GSM8K rows at `path` give (one per question)."""
    lines = Path(path).read_text().splitlines()
    demos: dict[str, Worked] = {}
    for line in lines:
        if limit is not None and len(demos) >= limit:
            break
        row = json.loads(line) if line.strip() else None
        if not row or "question" not in row or "<<" not in row.get("answer", ""):
            continue
        try:
            demo = worked(row, big_values, seed, inline_below)
        except bigvalue.NotReplayable:
            continue
        demos.setdefault(demo.question, demo)
    return list(demos.values())


def replay(agent: Any, script: Demonstrations, demos: list[Worked],
           on_finish: Callable[[int], None] | None = None) -> list[tuple[Worked, Any, str | None]]:
    """Each demonstration through `agent`'s engine (its generator must be `script`): the trajectory and why it is
    dropped (None: kept). `on_finish(i)` as demonstration i finishes (`RolloutEngine.run`)."""
    prompts = [agent.engine.prompt_ids(agent.system_prompt, d.question) for d in demos]
    for demo, prompt in zip(demos, prompts, strict=True):
        script.add(prompt, segments(demo, agent.protocol))
    trajectories = agent.engine.run([d.question for d in demos], prompts, on_finish)
    return [(d, t, why_dropped(t, d)) for d, t in zip(demos, trajectories, strict=True)]


def main(argv: list[str] | None = None, prog: str | None = None) -> Path:
    from delegate.cli import add_recipe_arguments, load_config, setup_logging

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_recipe_arguments(parser, config_help="the recipe whose planner prompt, coder and sandbox serve")
    parser.add_argument("--out", type=Path, required=True, help="the kept demonstrations (JSONL records)")
    parser.add_argument("--limit", type=int, help="problems (default: the recipe's data.limit)")
    parser.add_argument("--inline-below", type=float, default=0.0,
                        help="write out (not call) a step whose numbers are all below this in size (default 0: "
                             "call every step)")
    args = parser.parse_args(argv)
    setup_logging()

    from delegate.training.recipe import Recipe

    recipe = load_config(parser, args, Recipe.from_yaml)

    from tqdm import tqdm
    from transformers import AutoTokenizer

    from delegate.planner import Agent, AgentConfig
    from delegate.training.records import record, write_records

    data = recipe.data
    demos = rows_of(data.path, args.limit if args.limit is not None else data.limit, data.big_values, data.seed,
                    args.inline_below)
    dropped: Counter[str] = Counter()
    limit = recipe.planner.max_tool_calls
    if limit < max((len(d.calls) for d in demos), default=0):  # the engine would stop them
        dropped["more calls than planner.max_tool_calls"] = sum(len(d.calls) > limit for d in demos)
        demos = [d for d in demos if len(d.calls) <= limit]
    if not demos:
        raise SystemExit(f"worked: no GSM8K row with a replayable <<expr=value>> chain in {data.path}")
    tokenizer = AutoTokenizer.from_pretrained(recipe.planner.model)
    script = Demonstrations(tokenizer)
    config = AgentConfig(planner=recipe.planner, coder=recipe.coder, executor=recipe.executor)
    write_records(args.out, [])
    kept = 0
    with Agent(config, tokenizer=tokenizer, generator=script) as agent, \
            tqdm(total=len(demos), desc="worked", unit="problem") as bar:
        source = "worked-big-value-gsm8k" if data.big_values else "worked-gsm8k"
        batch = recipe.planner.batch_size
        for start in range(0, len(demos), batch):
            chunk = demos[start:start + batch]
            good = []
            for demo, trajectory, reason in replay(agent, script, chunk, on_finish=lambda _: bar.update()):
                if reason is None:
                    good.append(record(trajectory, tokenizer, reference=demo.answer, source=source))
                else:
                    dropped[reason] += 1
            write_records(args.out, good, append=True)
            kept += len(good)
            bar.set_postfix(kept=kept)
    log.info("worked: %d of %d demonstrations kept -> %s; dropped: %s", kept, kept + sum(dropped.values()), args.out,
             ", ".join(f"{n} {why}" for why, n in dropped.most_common()) or "none")
    return args.out


if __name__ == "__main__":
    main()
