"""The real planner in each protocol and prompt variant, side by side on the same problems: one table.

    python bench/real_protocols.py --data ../shared/data/gsm8k/test.jsonl --limit 20           # CPU, a few minutes
    python bench/real_protocols.py --data ../shared/data/gsm8k/test.jsonl --limit 300 --device cuda --batch 300

The model is loaded once (the real Qwen2.5-Coder-0.5B-Instruct by default, planner and frozen coder alike) and
shared by every row; each row is `training.evaluate` with one protocol, prompt file and marker set. Besides
accuracy and tool use it counts what the real-model issue found: requests copied word for word from the prompt,
requests with no number (the coder cannot see the question), calls in a form the protocol does not parse, repeated
calls, planner-written results and stops right after a result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import yaml

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)

from delegate.coder.config import resolve
from delegate.planner.protocols import CODE_TAGS
from delegate.training.models import fetch

TAGS = CODE_TAGS.model_dump()  # the `<code>` variants' markers (the default is a ```python block)
# (row name, protocol, prompt file, markers or None, tools)
VARIANTS = [
    ("no tools", "request", "prompts/planner_request.txt", None, False),
    ("request v1 (example)", "request", "prompts/variants/planner_request_v1.txt", None, True),
    ("request v2", "request", "prompts/variants/planner_request_v2.txt", None, True),
    ("request v3 (template)", "request", "prompts/variants/planner_request_v3.txt", None, True),
    ("request v4 (cannot calculate)", "request", "prompts/variants/planner_request_v4.txt", None, True),
    ("request v5 (cannot calculate, template)", "request", "prompts/variants/planner_request_v5.txt", None, True),
    ("code v1 (<code>, example)", "code", "prompts/variants/planner_code_v1.txt", TAGS, True),
    ("code v2 (<code>)", "code", "prompts/variants/planner_code_v2.txt", TAGS, True),
    ("code (default: fenced)", "code", "prompts/planner_code.txt", None, True),
    ("chat v1", "chat", "prompts/variants/planner_chat_v1.txt", None, True),
    ("chat v2", "chat", "prompts/variants/planner_chat_v2.txt", None, True),
    ("repl v1 (example)", "repl", "prompts/variants/planner_repl_v1.txt", None, True),
    ("repl v2", "repl", "prompts/variants/planner_repl_v2.txt", None, True),
]


def row_config(model: str, protocol: str, prompt: str, markers: dict | None, tools: bool, args) -> dict:
    planner = {"model": model, "device": args.device, "protocol": protocol, "prompt": prompt,
               "temperature": args.temperature, "max_completion_tokens": args.max_tokens, "max_tool_calls": 4,
               "batch_size": args.batch, "tools": tools, "reuse_cache": protocol == "repl"}
    if markers:
        planner["markers"] = markers
    return {"planner": planner,
            "coder": {"model": model, "device": args.device, "max_new_tokens": 256, "batch_size": args.batch},
            "executor": {"timeout_s": 10.0, "isolation": args.isolation}}


def extra_counts(records: list[dict], prompt_text: str) -> dict[str, float]:
    requests = [c["request"] for r in records for c in r["tool_calls"]]
    seen = Counter(v for r in records for v in r["violations"])
    n = max(len(records), 1)
    return {"copied": sum(bool(q) and q in prompt_text for q in requests) / max(len(requests), 1),
            **{name: seen[name] / n for name in ("request_without_numbers", "unparsed_call", "repeated_call",
                                                 "planner_wrote_result", "eos_after_result")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--isolation", choices=["full", "none"], default="full",
                        help="the sandbox's isolation; none where bubblewrap is missing (the GPU machine)")
    parser.add_argument("--big-values", action="store_true")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--model", default=None, help="a model directory (default: the prepared real 0.5B)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--rows", nargs="*", help="only the rows whose names start with these")
    parser.add_argument("--out", type=Path, default=Path("runs/real-protocols"))
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from delegate.coder import CoderConfig, build_coder
    from delegate.executor import Sandbox, SandboxConfig
    from delegate.training.data import load_problems
    from delegate.training.evaluate import evaluate

    model_dir = args.model or str(fetch("qwen2.5-coder-0.5b"))
    problems = [dict(r) for r in load_problems(args.data, split="test", limit=args.limit,
                                               big_values=args.big_values)]
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    coder_tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [v for v in VARIANTS if not args.rows or any(v[0].startswith(r) for r in args.rows)]
    table = []
    with Sandbox(SandboxConfig(timeout_s=10.0, isolation=args.isolation)) as sandbox, \
            build_coder(CoderConfig(model=model_dir, device=args.device, max_new_tokens=256,
                                    batch_size=args.batch), model=model, tokenizer=coder_tokenizer) as coder:
        for name, protocol, prompt, markers, tools in rows:
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
                yaml.safe_dump(row_config(model_dir, protocol, prompt, markers, tools, args), file)
            out = args.out / name.split(" (")[0].replace(" ", "-")
            metrics = evaluate(file.name, problems, out, model=model, tokenizer=tokenizer, sandbox=sandbox,
                               coder=coder)
            records = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
            metrics |= extra_counts(records, resolve(prompt).read_text())
            table.append((name, metrics))
            print(f"{name}: {metrics['accuracy']:.1%}", flush=True)
    low_high = lambda m: f"[{100 * m['accuracy_ci95'][0]:.0f}, {100 * m['accuracy_ci95'][1]:.0f}]"  # noqa: E731
    print(f"\n{len(problems)} problems from {args.data}{' (big values)' if args.big_values else ''}, "
          f"temperature {args.temperature}, {args.max_tokens} tokens, model {Path(model_dir).name}\n")
    print("| row | accuracy | 95% | calls | calls/answer | tool errors | violations | copied | no numbers "
          "| unparsed | repeated | wrote result | eos after result | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, m in table:
        print(f"| {name} | {m['accuracy']:.1%} | {low_high(m)} | {m['tool_call_rate']:.0%} | "
              f"{m['calls_per_answer']:.2f} | {m['tool_error_rate']:.0%} | {m['format_violation_rate']:.0%} | "
              f"{m['copied']:.0%} | {m['request_without_numbers']:.0%} | {m['unparsed_call']:.0%} | "
              f"{m['repeated_call']:.0%} | {m['planner_wrote_result']:.0%} | {m['eos_after_result']:.0%} | "
              f"{m['seconds']:.0f} |")


if __name__ == "__main__":
    main()
