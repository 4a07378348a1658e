"""What the toy models can do after SFT, skill by skill, on held-out problems: the measurement behind each stage.

A delegating transcript needs three copies to come out right: the planner writes the problem's expression as its
request (or its program, in code mode), the coder wraps the request in its program, and the planner copies the
printed result into `\\boxed{}`. Each skill is scored by teacher forcing on the SFT transcript of the problem: a
piece counts as right when the model's most likely token is the transcript's token at every position of it, which
is exactly when greedy decoding would write the piece. The first token of the call (whether to delegate at all) is
left out: GRPO sets that decision, and the skills measure what delegating is worth once decided.

    python -m delegate.training.toy.skills --world runs/toy --modes request code
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from delegate.coder.config import resolve
from delegate.training.toy import sft
from delegate.training.toy.tasks import Problem, read_jsonl

LONG_RESULT = 14  # digits: results this long or longer are counted apart (copying weakens with length)


@dataclass(frozen=True)
class Skills:
    n: int
    call: float  # the request (request mode) or program (code mode) written exactly, given the decision to call
    box: float  # the printed result copied exactly into the box, given a right call and result
    box_long: float  # the same, on results of LONG_RESULT digits or more
    coder: float | None  # the coder's program exact, given the right request (request mode)
    pipeline: float  # the product: the greedy accuracy of always delegating, if the errors were independent


def _segments(mask: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of ones in a loss mask."""
    runs, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _exact(model: Any, examples: list[sft.Example], pieces: list[list[tuple[int, int]]],
           batch_size: int = 32) -> list[list[bool]]:
    """For each example, whether the argmax prediction matches every token of each (start, end) piece."""
    import torch

    device = next(model.parameters()).device
    out = []
    for first in range(0, len(examples), batch_size):
        batch = examples[first: first + batch_size]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        for row, e in enumerate(batch):  # right padding: positions stay those of training
            ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
            attention[row, : len(e.input_ids)] = 1
        with torch.no_grad():
            predicted = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.argmax(-1).cpu()
        for row, e in enumerate(batch):
            target = torch.tensor(e.input_ids)
            out.append([bool((predicted[row, s - 1: t - 1] == target[s:t]).all())
                        for s, t in pieces[first + row]])
    return out


def measure(world: Path, mode: str, problems: list[Problem], adapter: str | Path | None = None,
            prompt: str | Path | None = None) -> Skills:
    """The SFT planner of `mode` under `world`, with the LoRA `adapter` that GRPO trained if given (and the coder, in
    request mode), on `problems`, under the system `prompt` it was trained with (default: the toy recipe's file)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from delegate.planner.protocols import build_protocol

    planner_dir = world / f"planner-{mode}"
    tokenizer = AutoTokenizer.from_pretrained(planner_dir)
    protocol = build_protocol(mode, sft.toy_markers(mode), 2000, tokenizer)
    system = resolve(str(prompt or f"prompts/toy_planner_{mode}.txt")).read_text()
    examples = [sft.planner_example(tokenizer, protocol, system, p, delegate=True) for p in problems]
    pieces = []
    for e in examples:
        (call_start, call_end), (box_start, box_end) = _segments(e.completion_mask)
        pieces.append([(call_start + 1, call_end), (box_start, box_end)])
    planner = AutoModelForCausalLM.from_pretrained(planner_dir)
    if adapter is not None:
        from peft import PeftModel

        planner = PeftModel.from_pretrained(planner, str(adapter))
    planner.eval()
    scores = _exact(planner, examples, pieces)
    call = [s[0] for s in scores]
    box = [s[1] for s in scores]
    long = [b for b, p in zip(box, problems, strict=True) if _digits(sft.printed(p.expression)) >= LONG_RESULT]
    coder = None
    if mode == "request":
        coder_dir = world / "coder"
        coder_prompt = resolve("prompts/toy_coder.txt").read_text()
        coder_examples = [sft.coder_example(tokenizer, coder_prompt, p.expression) for p in problems]
        model = AutoModelForCausalLM.from_pretrained(coder_dir).eval()
        coder = _share([s[0] for s in _exact(model, coder_examples, [_segments(e.completion_mask)
                                                                     for e in coder_examples])])
    pipeline = _share(call) * _share(box) * (1.0 if coder is None else coder)
    return Skills(len(problems), _share(call), _share(box), _share(long), coder, pipeline)


def _digits(text: str) -> int:
    return sum(ch.isdigit() for ch in text)


def _share(values: list[bool]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Skills]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=Path("runs/toy"))
    parser.add_argument("--modes", nargs="+", choices=["request", "code"], default=["request", "code"])
    parser.add_argument("--data", type=Path, help="problems (JSONL); default: the world's held-out.jsonl")
    parser.add_argument("--trained", action="store_true", help="the planners with their GRPO adapters "
                        "(<world>/grpo-<mode>), not the SFT planners")
    args = parser.parse_args(argv)
    problems = list(read_jsonl(args.data or args.world / "held-out.jsonl"))
    results = {mode: measure(args.world, mode, problems, args.world / f"grpo-{mode}" if args.trained else None)
               for mode in args.modes}
    print(json.dumps({mode: asdict(s) for mode, s in results.items()}, indent=2))
    return results


if __name__ == "__main__":
    main()
