"""Training and evaluation sets: loaders that return a `datasets.Dataset` with `prompt`, `answer` and `source`.

```python
from delegate.training.data import load_problems
load_problems("gsm8k")                                  # the hub's openai/gsm8k, split "train"
load_problems("math", split="test", levels=(4, 5))      # MATH, levels 4 and 5 only
load_problems("my/gsm8k-copy.parquet", schema="gsm8k")  # a local file in the hub's schema
load_problems("runs/toy/held-out.jsonl")                # a file that already has prompt/answer columns
load_problems("unseen:countdown", split="test")         # a generated suite of unseen tasks (`training.suites`)
```

Each source knows its hub id and schema: GSM8K (`question`, `answer` ending in `#### 72`), MATH (`problem`,
`level`, `solution` with a boxed answer), big-value-gsm (no schema documented anywhere we could read: the question
and answer fields are detected, and a clear error lists the columns when they cannot be), NuminaMath (1.5's
`answer` column, else the boxed answer of `solution`) and OpenThoughts (its `metadata` config, math rows, the boxed
answer of `ground_truth_solution`). A local JSON, JSONL or Parquet file in a source's schema loads the same way.

The seed's filters (`drop_reason`) then remove multiple-choice questions, proofs and concept questions, and
anything whose reference answer cannot be verified. Dropping what the starting policy always solves is the
curriculum's job (`python -m delegate.training.curriculum`), which samples that policy.

The generated suites of unseen tasks (`unseen`, `unseen:countdown`, `unseen:knights,letters`; see
`training.suites`) are made here rather than read: `split` picks their train or held-out part, `seed` the draw,
`limit` their size (200 a suite without it), and the filters do not apply (their answers are exact by
construction, graded by each suite's checker).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delegate.planner.trajectory import last_boxed
from delegate.training import suites

log = logging.getLogger("training.data")

Row = dict[str, Any]

_LOCAL_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
QUESTION_FIELDS = ("prompt", "question", "problem", "query", "input", "instruction", "Question", "Problem")
ANSWER_FIELDS = ("answer", "final_answer", "ground_truth", "target", "label", "output", "solution", "Answer")


def read_table(path_or_id: str, split: str = "train", config: str | None = None) -> Any:
    """A local JSON/JSONL/Parquet file, a hub dataset (`config` is the hub's subset name), or a local folder laid
    out as a hub dataset repository (a clone, or a copy made offline)."""
    from datasets import load_dataset

    local = Path(path_or_id)
    if local.is_dir():
        return load_dataset(str(local), config, split=split)
    if local.exists():
        kind = _LOCAL_KINDS.get(local.suffix)
        if kind is None:
            raise ValueError(f"{path_or_id}: expected a .json, .jsonl or .parquet file")
        return load_dataset(kind, data_files=str(local), split="train")
    if "/" not in path_or_id:
        raise ValueError(f"{path_or_id!r} is neither a file nor a hub id (owner/name); known sources: "
                         f"{', '.join(SOURCES)}")
    return load_dataset(path_or_id, config, split=split)


def after_hashes(answer: str) -> str:
    """GSM8K's reference: what follows `####`, without thousands separators."""
    if "####" not in answer:
        raise ValueError(f"a GSM8K answer without '####': {answer[-80:]!r}")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def gsm8k_row(row: Row) -> Row:
    return {"prompt": row["question"], "answer": after_hashes(row["answer"]), "source": "gsm8k"}


def math_row(row: Row) -> Row:
    """MATH (`type`, the answer boxed in `solution`) and MATH500 (`subject`, and its own `answer` column)."""
    kind = str(row.get("type") or row.get("subject") or "").lower().replace(" ", "_")
    answer = str(row.get("answer") or "").strip() or last_boxed(row["solution"]) or ""
    return {"prompt": row["problem"], "answer": answer, "source": f"math/{kind}" if kind else "math"}


def math_level(row: Row) -> int | None:
    """MATH's 'Level 4' as 4; None for the '?' level some rows carry."""
    found = re.search(r"\d+", str(row.get("level", "")))
    return int(found.group()) if found else None


def numina_row(row: Row) -> Row:
    answer = str(row.get("answer") or "").strip() or last_boxed(row.get("solution") or "") or ""
    kind = row.get("question_type") or ""
    return {"prompt": row["problem"], "answer": answer, "source": f"numina/{row.get('source', '')}".rstrip("/"),
            "question_type": kind}


def openthoughts_row(row: Row) -> Row:
    return {"prompt": row["problem"], "answer": last_boxed(row.get("ground_truth_solution") or "") or "",
            "source": f"openthoughts/{row.get('source', '')}".rstrip("/")}


def detect_fields(columns: Iterable[str], source: str) -> tuple[str, str]:
    """The question and answer columns of an undocumented schema, or a ValueError that lists what is there."""
    names = list(columns)
    question = next((f for f in QUESTION_FIELDS if f in names), None)
    answer = next((f for f in ANSWER_FIELDS if f in names and f != question), None)
    if question is None or answer is None:
        raise ValueError(f"{source}: cannot tell the question and answer fields apart; columns found: "
                         f"{', '.join(names)}. Expected a question field among {', '.join(QUESTION_FIELDS)} and an "
                         f"answer field among {', '.join(ANSWER_FIELDS)}")
    return question, answer


def reference_of(text: Any) -> str:
    """A reference answer from a free-form answer field: after `####`, else the last boxed, else the text."""
    text = str(text).strip()
    if "####" in text:
        return after_hashes(text)
    return last_boxed(text) or text


def detected_rows(columns: list[str], source: str) -> Callable[[Row], Row]:
    question, answer = detect_fields(columns, source)
    log.info("%s: question field %r, answer field %r (detected)", source, question, answer)
    return lambda row: {"prompt": str(row[question]), "answer": reference_of(row[answer]), "source": source}


@dataclass(frozen=True)
class Source:
    hub_id: str
    convert: Callable[[Row], Row] | None  # None: detect the fields
    config: str | None = None
    keep: Callable[[Row], bool] | None = None  # rows of the raw schema to keep (e.g. OpenThoughts' math domain)


SOURCES: dict[str, Source] = {
    "gsm8k": Source("openai/gsm8k", gsm8k_row, config="main"),
    "math": Source("DigitalLearningGmbH/MATH-lighteval", math_row),
    "big-value-gsm": Source("JinyiHan/big-value-gsm", None),
    "numinamath": Source("AI-MO/NuminaMath-1.5", numina_row),
    "openthoughts": Source("open-thoughts/OpenThoughts-114k", openthoughts_row, config="metadata",
                           keep=lambda row: row.get("domain", "math") == "math"),
}
HUB_IDS = {source.hub_id: name for name, source in SOURCES.items()} | {"AI-MO/NuminaMath-CoT": "numinamath"}


def detect_schema(columns: list[str]) -> str | None:
    """Which source's schema a local file has, from its columns (None: a plain prompt/answer file, or unknown)."""
    have = set(columns)
    if {"prompt", "answer"} <= have:
        return None
    if {"problem", "ground_truth_solution"} <= have:
        return "openthoughts"
    if {"problem", "level", "solution"} <= have:
        return "math"
    if {"problem", "solution"} <= have:
        return "numinamath"
    if {"question", "answer"} <= have:
        return "gsm8k"
    return None


# --- the seed's filters ---------------------------------------------------------------------------------------

_CHOICES = re.compile(r"(\(\s*[A-E]\s*\)|(^|\n)\s*[A-E][.:)]\s)")
_CHOICE_WORDS = re.compile(r"\bwhich of the following\b|\banswer choices\b|\bchoose the correct\b", re.I)
# "show that" only as an instruction: GSM8K says "his report card needs to show that he received 80".
_PROOF = re.compile(r"\b(prove|justify|give a proof)\b|(^|[.!?:]\s+)(show|demonstrate) that\b", re.I)
_CONCEPT = re.compile(r"^\s*(explain|describe|discuss|define|what is meant by|why does|why is|compare)\b", re.I)
_WORDY = re.compile(r"[A-Za-z]{4,}")


def drop_reason(question: str, answer: str, question_type: str = "") -> str | None:
    """Why the seed drops a problem, or None to keep it: `multiple_choice`, `proof`, `concept` or
    `no_verifiable_answer` (empty, too long, prose, or nothing math-verify can parse)."""
    kind = question_type.lower()
    if kind in ("mcq", "multiple-choice") or _CHOICE_WORDS.search(question) or len(_CHOICES.findall(question)) >= 3:
        return "multiple_choice"
    if re.fullmatch(r"\(?[A-E]\)?", answer.strip()):
        return "multiple_choice"
    if kind == "proof" or _PROOF.search(question) or answer.strip().lower() in ("proof", "see proof"):
        return "proof"
    if _CONCEPT.search(question):
        return "concept"
    return None if verifiable(answer) else "no_verifiable_answer"


def verifiable(answer: str) -> bool:
    """A short mathematical answer that math-verify parses (not prose, not a paragraph)."""
    text = answer.strip()
    if not text or len(text) > 80:
        return False
    words = _WORDY.findall(re.sub(r"\\[A-Za-z]+", " ", text))  # LaTeX commands are not prose
    if len(words) > 2:
        return False
    from math_verify import parse

    return bool(parse(f"${text}$"))


def apply_filters(dataset: Any) -> Any:
    """Drop what `drop_reason` drops, and log how many for each reason."""
    types = dataset["question_type"] if "question_type" in dataset.column_names else [""] * len(dataset)
    reasons = [drop_reason(q, a, t) for q, a, t in zip(dataset["prompt"], dataset["answer"], types, strict=True)]
    counts = Counter(r for r in reasons if r)
    if counts:
        log.info("filters dropped %d of %d: %s", sum(counts.values()), len(dataset), dict(counts))
    return dataset.select([i for i, reason in enumerate(reasons) if reason is None])


# --- the one entry point ---------------------------------------------------------------------------------------

def load_problems(name_or_path: str, *, schema: str | None = None, split: str = "train",
                  levels: Iterable[int] | None = None, limit: int | None = None, filters: bool = True,
                  question_field: str | None = None, answer_field: str | None = None, big_values: bool = False,
                  seed: int = 0) -> Any:
    """A dataset with `prompt`, `answer` and `source` columns.

    `name_or_path`: a source name (`gsm8k`, `math`, `big-value-gsm`, `numinamath`, `openthoughts`), a generated
    suite (`unseen`, `unseen:NAME[,NAME]`: `training.suites`, `seed` its draw), a hub id, or a local
    JSON/JSONL/Parquet file. `schema` names the source whose schema a local file or other hub id has
    (detected from the columns when left out). `levels` keeps MATH levels (e.g. 3 to 5). `question_field` and
    `answer_field` name the columns of any other schema. `filters` applies `drop_reason`. `big_values` rebuilds
    GSM8K-schema data as big-value GSM8K (`training.bigvalue`, deterministic for `seed`): GSM8K's train file
    gives the train split, its test file the test split.
    """
    if suites.is_suite_source(name_or_path):
        from datasets import Dataset

        if schema or levels is not None or question_field or answer_field or big_values:
            raise ValueError(f"{name_or_path}: a generated suite takes split, limit and seed only (not schema, "
                             "levels, question_field, answer_field or big_values)")
        return Dataset.from_list(suites.rows(name_or_path, split, limit, seed))
    if name_or_path in SOURCES:
        source_name, where = name_or_path, SOURCES[name_or_path].hub_id
    else:
        source_name, where = schema or HUB_IDS.get(name_or_path), name_or_path
    if source_name is not None and source_name not in SOURCES:
        raise ValueError(f"unknown schema {source_name!r}; known: {', '.join(SOURCES)}")
    source = SOURCES.get(source_name) if source_name else None
    config = source.config if source and where == source.hub_id else None
    raw = read_table(where, split, config)
    if big_values:
        raw = big_value_rows(raw, where, seed)
        source_name, source = None, None
    columns = list(raw.column_names)
    if source is None and not (question_field or answer_field):
        source_name = detect_schema(columns)
        source = SOURCES.get(source_name) if source_name else None
    label = source_name or Path(where).stem
    if question_field or answer_field:
        convert = fields_rows(columns, question_field or "prompt", answer_field or "answer", label)
    elif source is not None and source.convert is not None:
        missing = _required(source_name) - set(columns)
        if missing:
            raise ValueError(f"{where}: not in the {source_name} schema, lacks {sorted(missing)}; columns found: "
                             f"{', '.join(columns)}")
        convert = source.convert
    else:
        convert = plain_rows(columns, label) if {"prompt", "answer"} <= set(columns) else detected_rows(columns,
                                                                                                         label)
    if source is not None and source.keep is not None:
        raw = raw.filter(source.keep)
    if levels is not None:
        wanted = set(levels)
        if "level" not in columns:
            raise ValueError(f"{where}: levels asked for, but the data has no 'level' column; columns: "
                             f"{', '.join(columns)}")
        raw = raw.filter(lambda row: math_level(row) in wanted)
    dataset = raw.map(lambda row: _normalised(convert(row)), remove_columns=columns)
    if filters:
        dataset = apply_filters(dataset)
    if "question_type" in dataset.column_names:
        dataset = dataset.remove_columns("question_type")
    return dataset.select(range(min(limit, len(dataset)))) if limit else dataset


def big_value_rows(raw: Any, where: str, seed: int) -> Any:
    from datasets import Dataset

    from delegate.training import bigvalue

    if not {"question", "answer"} <= set(raw.column_names):
        raise ValueError(f"{where}: big_values needs GSM8K's schema (question, answer with <<expr=value>> "
                         f"annotations); columns found: {', '.join(raw.column_names)}")
    rows = list(bigvalue.build(raw, seed))
    log.info("big-value GSM8K from %s: %d of %d problems kept (%.1f%%)", where, len(rows), len(raw),
             100 * len(rows) / max(len(raw), 1))
    if not rows:
        raise ValueError(f"{where}: no problem's calculation chain could be replayed with big values")
    return Dataset.from_list([{k: r[k] for k in ("prompt", "answer", "source")} for r in rows])


def _required(source: str) -> set[str]:
    return {"gsm8k": {"question", "answer"}, "math": {"problem", "solution"}, "numinamath": {"problem"},
            "openthoughts": {"problem", "ground_truth_solution"}}.get(source, set())


def fields_rows(columns: list[str], question: str, answer: str, label: str) -> Callable[[Row], Row]:
    missing = [f for f in (question, answer) if f not in columns]
    if missing:
        raise ValueError(f"{label}: no column {', '.join(map(repr, missing))}; columns found: {', '.join(columns)}")
    return lambda row: {"prompt": str(row[question]), "answer": reference_of(row[answer]),
                        "source": str(row.get("source") or label)}


def plain_rows(columns: list[str], label: str) -> Callable[[Row], Row]:
    """Our own format (prompt, answer, maybe source): kept as it is."""
    return lambda row: {"prompt": row["prompt"], "answer": str(row["answer"]),
                        "source": str(row.get("source") or label)}


def _normalised(row: Row) -> Row:
    return {"prompt": row["prompt"], "answer": str(row["answer"]).strip(), "source": row["source"],
            "question_type": str(row.get("question_type") or "")}
