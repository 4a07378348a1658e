"""The real coder on big-value requests, by coder prompt: how many programs print the exact value.

Requests are the calls a planner makes on big-value GSM8K (`Compute <step>` with the step's big numbers, as the
worked demonstrations write them), taken from steps whose exact value has more than 28 significant digits (where
`decimal.Decimal`'s default context rounds) and, as a control, from steps with at most 28. Each prompt's programs
run in the sandbox; a program is exact when its output equals the step's value (`answers_match`).

    python -m bench.coder_precision [--requests 24] [--prompts prompts/variants/coder_v1.txt,prompts/coder.txt]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

from delegate.coder import CoderConfig, build_coder
from delegate.executor import Sandbox, SandboxConfig
from delegate.training import bigvalue
from delegate.training.models import fetch
from delegate.training.rewards import answers_match


def significant_digits(value: str) -> int:
    return len(value.replace("-", "").replace(".", "").lstrip("0"))


def requests(gsm8k: Path, count: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """`count` (request, exact value) pairs past 28 significant digits and `count` within, from distinct problems."""
    rows = [json.loads(line) for line in gsm8k.read_text().splitlines() if line.strip()]
    pools: dict[str, list[tuple[str, str]]] = {"> 28 digits": [], "<= 28 digits": []}
    for row in rows:
        try:
            problem = bigvalue.rebuild(row["question"], row["answer"], seed)
        except bigvalue.NotReplayable:
            continue
        exact = list(itertools.takewhile(lambda s: "/" not in s[1], problem.steps))  # up to a first non-decimal
        steps = [(e, v) for e, v in exact if re.search(r"\d{9}", e)]
        long = [s for s in steps if significant_digits(s[1]) > 28]
        short = [s for s in steps if significant_digits(s[1]) <= 28]
        if long:
            pools["> 28 digits"].append(long[-1])
        elif short:
            pools["<= 28 digits"].append(short[-1])
    rng = random.Random(seed)
    return {k: [(f"Compute {e}", v) for e, v in rng.sample(pool, min(count, len(pool)))] for k, pool in pools.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/gsm8k/train.jsonl"))
    parser.add_argument("--requests", type=int, default=24, help="per kind of request")
    parser.add_argument("--prompts", default="prompts/variants/coder_v1.txt,prompts/coder.txt")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kinds = requests(args.data, args.requests, args.seed)
    model = fetch(args.model)
    print("| prompt | requests | exact | uses Decimal | Decimal with raised precision | uses float |")
    print("|---|---|---|---|---|---|")
    with Sandbox(SandboxConfig(timeout_s=5.0)) as sandbox:
        for prompt in args.prompts.split(","):
            config = CoderConfig(model=str(model), device="cpu", dtype="float32", prompt=prompt,
                                 max_new_tokens=args.max_new_tokens)
            with build_coder(config) as coder:
                for kind, pairs in kinds.items():
                    codes = coder.write([r for r, _ in pairs])
                    results = sandbox.run_many(codes)
                    exact = sum(answers_match(v, r.stdout.strip()) for (_, v), r in zip(pairs, results, strict=True))
                    decimal = sum("Decimal" in c for c in codes)
                    raised = sum("prec" in c for c in codes)
                    floats = sum(bool(re.search(r"\bfloat\(|\d\.\d", c)) and "Decimal" not in c for c in codes)
                    print(f"| {prompt} | {kind}: {len(pairs)} | {exact} ({exact / max(len(pairs), 1):.0%}) | "
                          f"{decimal} | {raised} | {floats} |", flush=True)


if __name__ == "__main__":
    main()
