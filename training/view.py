"""The trajectory viewer: one self-contained HTML file from trajectory records.

    delegate view runs/eval/toy/trajectories.jsonl -o report.html
    delegate view runs/toy/grpo-request/samples/*.jsonl -o samples.html   # python -m delegate.training.view: the same

Reads the JSONL that evaluation (`training.evaluate`) and training (`<output_dir>/samples/`) write. The page needs
no network and no build step: the records are embedded as JSON, the page's script renders them with DOM text
nodes (model output is never parsed as HTML). It lists the trajectories with filters (correct or wrong, has a tool
error, source, behaviour around the tool calls, a text search; evaluation's records carry the behaviour flags of
`training.behaviour`: a failed call, right after one, called again with a change, a verification call); each
shows the question, the transcript with the environment's inserted tokens highlighted (they are out of the loss),
every tool call's request, code, output and status, and the rewards.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delegate.training.records import read_records

TEMPLATE = Path(__file__).with_name("view.html")


def render(records: list[dict[str, Any]], title: str) -> str:
    """The page. Every `<` of the embedded JSON is written `\\u003c`, so no record can close the script element."""
    data = json.dumps(records, ensure_ascii=False).replace("<", "\\u003c")
    return TEMPLATE.read_text().replace("__TITLE__", html.escape(title)).replace("__RECORDS__", data)


def main(argv: list[str] | None = None, prog: str | None = None) -> Path:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="trajectory JSONL files")
    parser.add_argument("-o", "--out", type=Path, default=Path("report.html"))
    parser.add_argument("--title", help="the page's title (default: the first file's name)")
    parser.add_argument("--drop-tokens", action="store_true",
                        help="leave token ids and log-probabilities out (a smaller page)")
    args = parser.parse_args(argv)
    records = [r for path in args.paths for r in read_records(path)]
    if args.drop_tokens:
        records = [{k: v for k, v in r.items() if k not in ("prompt_ids", "completion_ids", "logprobs", "env_mask")}
                   for r in records]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(records, args.title or " + ".join(p.name for p in args.paths)))
    print(f"{len(records)} trajectories -> {args.out}")
    return args.out


if __name__ == "__main__":
    main()
