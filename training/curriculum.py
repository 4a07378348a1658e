"""The curriculum: each training problem's pass rate under the starting policy, easiest first.

    python -m delegate.training.curriculum --config RECIPE.yaml --out runs/curriculum.jsonl [--samples 8]
        [--drop-unsolved] [--trajectories runs/curriculum-rollouts.jsonl] [--set SECTION.FIELD=VALUE ...]

Samples `--samples` answers per problem (by default the recipe's `data.curriculum.samples`, else 8) through the
same engine and sandbox as training (the recipe's planner, at its temperature), drops the problems every sample
solved (they teach nothing), optionally those none solved (`--drop-unsolved`, by default the recipe's), and
writes the rest from the highest pass rate to the lowest, with a `pass_rate` column. Point the recipe's
`data.path` at the file and keep `grpo.shuffle_dataset: false`: training then follows that order, and a resumed
run continues it where it stopped (the trainer skips the batches it has already seen). `--trajectories` keeps
every sampled rollout as a trajectory record (`training.records`): the pool that `python -m delegate.training.sft`
picks its examples from.

Beside the file, `<out>.meta.json` holds its fingerprint (`fingerprint`): what the pass rates depend on (the data
section, the loaded rows' prompts and answers, the sample count and the starting policy) and the file's own hash.
A recipe's `data.curriculum.path` is read only when its fingerprint matches the recipe's (`check_fingerprint`):
a file built for other data or another policy would otherwise replace the training set without a word. A file
without one (from before fingerprints) is refused too; `--adopt` writes the fingerprint of the recipe for an
existing `--out` file without sampling, for the user who knows it was built from that data and policy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm

from delegate.coder.config import resolve
from delegate.planner import Agent, AgentConfig
from delegate.planner.protocols import DEFAULT_MARKERS, Protocol
from delegate.training.recipe import Recipe
from delegate.training.rewards import answers_match

log = logging.getLogger("training.curriculum")


@dataclass(frozen=True)
class Scored:
    prompt: str
    answer: str
    pass_rate: float
    source: str = ""


def pass_rates(agent: Agent, problems: list[dict[str, str]], samples: int, batch: int = 64,
               trajectories: Path | None = None) -> list[Scored]:
    """Each problem's share of `samples` solutions whose answer matches the reference (with a progress bar that
    moves as each sample finishes); every rollout appended to `trajectories` as a record, batch by batch, when
    given."""
    from delegate.training.records import record, write_records

    flat = [p for p in problems for _ in range(samples)]
    solved: list[bool] = []
    if trajectories is not None:
        write_records(trajectories, [])
    with tqdm(total=len(flat), desc="curriculum", unit="sample") as progress:
        for start in range(0, len(flat), batch):
            chunk = flat[start:start + batch]
            solutions = agent.solve_many([p["prompt"] for p in chunk], on_finish=lambda _: progress.update())
            solved += [answers_match(p["answer"], s.answer) for p, s in zip(chunk, solutions, strict=True)]
            if trajectories is not None:
                write_records(trajectories, [record(s.trajectory, agent.tokenizer, reference=p["answer"],
                                                    source=p.get("source")) for p, s in zip(chunk, solutions,
                                                                                             strict=True)],
                              append=True)
    scored = [Scored(p["prompt"], p["answer"], sum(solved[i * samples:(i + 1) * samples]) / samples,
                     p.get("source") or "") for i, p in enumerate(problems)]
    if samples > 1 and scored and all(s.pass_rate in (0.0, 1.0) for s in scored):
        log.warning("curriculum: every pass rate is 0 or 1 (%d samples each, planner temperature %s): the samples "
                    "agree, so the order says nothing about difficulty within the solved or the unsolved; sample "
                    "at the temperature training uses (planner.temperature > 0)", samples,
                    agent.config.planner.temperature)
    return scored


def write_scored(scored: list[Scored], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for s in scored:
            f.write(json.dumps(asdict(s)) + "\n")


def read_scored(path: Path) -> list[Scored]:
    return [Scored(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _texts_sha256(texts: list[Any]) -> str:
    return _sha256(json.dumps(list(texts), ensure_ascii=False, default=str).encode())


def _adapter_weights_sha256(adapter: str) -> str | None:
    """The hash of a local adapter directory's weights file (None for a hub id or a directory without one)."""
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        weights = Path(adapter) / name
        if weights.is_file():
            return _sha256(weights.read_bytes())
    return None


def fingerprint(recipe: Recipe, prompts: list[Any], answers: list[Any], samples: int,
                drop_unsolved: bool) -> dict[str, Any]:
    """What a curriculum's pass rates depend on, flat (`section.field: value`; `...sha256`: a hash of contents):
    how the data was loaded, the loaded rows' prompts and answers in order, the sample count, whether the unsolved
    were dropped, and the starting policy (planner model, adapter and its weights, protocol, prompt, sampling and
    rollout limits; the coder's model, prompt and sampling when the protocol calls it). The base model's weights
    are named, not hashed (gigabytes)."""
    planner, coder = recipe.planner, recipe.coder
    data = recipe.data.model_dump(mode="json", by_alias=True, exclude={"curriculum"})
    found: dict[str, Any] = {f"data.{key}": value for key, value in data.items()}
    found |= {"rows": len(prompts), "rows.prompts.sha256": _texts_sha256(prompts),
              "rows.answers.sha256": _texts_sha256(answers), "curriculum.samples": samples,
              "curriculum.drop_unsolved": drop_unsolved}
    found |= {f"planner.{key}": getattr(planner, key) for key in (
        "model", "adapter", "protocol", "temperature", "top_p", "max_completion_tokens", "max_tool_calls", "tools",
        "max_result_chars", "max_request_chars", "stop_at_answer")}
    found["planner.adapter.weights.sha256"] = _adapter_weights_sha256(planner.adapter) if planner.adapter else None
    found["planner.markers"] = planner.markers.model_dump(mode="json") if planner.markers is not None else None
    found["planner.prompt.sha256"] = _sha256(resolve(planner.prompt_file).read_bytes())
    if Protocol(planner.protocol, DEFAULT_MARKERS[planner.protocol], planner.max_request_chars).uses_coder:
        found |= {f"coder.{key}": getattr(coder, key) for key in ("model", "context", "temperature", "top_p",
                                                                   "max_new_tokens")}
        found["coder.prompt.sha256"] = _sha256(resolve(coder.prompt).read_bytes())
        if coder.context == "question":
            found["coder.context_template.sha256"] = _sha256(resolve(coder.context_template).read_bytes())
    return found


def recipe_fingerprint(recipe: Recipe, dataset: Any, samples: int, drop_unsolved: bool) -> dict[str, Any]:
    """`fingerprint` of `dataset` (the recipe's loaded problems: rows with `prompt` and `answer`)."""
    rows = [dict(row) for row in dataset]
    return fingerprint(recipe, [r["prompt"] for r in rows], [r["answer"] for r in rows], samples, drop_unsolved)


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def write_fingerprint(path: Path, found: dict[str, Any]) -> Path:
    """`<path>.meta.json`: `found` and the hash of the curriculum file as it is now."""
    meta = meta_path(path)
    meta.write_text(json.dumps({"fingerprint": found, "file.sha256": _sha256(path.read_bytes())}, indent=1) + "\n")
    return meta


_DIFFERS = {"rows.prompts.sha256": "the rows' prompts differ", "rows.answers.sha256": "the rows' answers differ",
            "planner.adapter.weights.sha256": "the adapter's weights differ",
            "planner.prompt.sha256": "the planner prompt file's contents differ",
            "coder.prompt.sha256": "the coder prompt file's contents differ",
            "coder.context_template.sha256": "the coder context template's contents differ"}


def fingerprint_differences(written: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Each difference in words: `data.limit: file 1, recipe 2048`, `the rows' answers differ`."""
    missing = object()
    found = []
    for key in dict.fromkeys([*expected, *written]):
        have, want = written.get(key, missing), expected.get(key, missing)
        if have == want:
            continue
        if key in _DIFFERS and have is not missing and want is not missing:
            found.append(_DIFFERS[key])
        else:
            found.append(f"{key}: file {'(absent)' if have is missing else json.dumps(have)}, recipe "
                         f"{'(absent)' if want is missing else json.dumps(want)}")
    return found


def check_fingerprint(path: Path, expected: dict[str, Any]) -> None:
    """Raise `ValueError` unless `path` has a fingerprint, is unchanged since it was written, and was built for
    `expected` (the recipe's), naming every difference."""
    meta = meta_path(path)
    again = f"delete it (and {meta.name}) to sample the curriculum again under this recipe"
    flags = f"--samples {expected['curriculum.samples']}" + " --drop-unsolved" * bool(expected[
        "curriculum.drop_unsolved"])
    adopt = (f"if it was built from this recipe's data and starting policy, adopt it: python -m "
             f"delegate.training.curriculum --config RECIPE --out {path} {flags} --adopt")
    if not meta.is_file():
        raise ValueError(f"data.curriculum.path {path} has no fingerprint ({meta} is missing), so nothing says which "
                         f"data and starting policy its pass rates are for: delete it to sample the curriculum "
                         f"again under this recipe, or, {adopt}")
    written = json.loads(meta.read_text())
    if written.get("file.sha256") != _sha256(path.read_bytes()):
        raise ValueError(f"data.curriculum.path {path} changed after its fingerprint ({meta}) was written: {again}, "
                         f"or, {adopt}")
    differences = fingerprint_differences(written.get("fingerprint", {}), expected)
    if differences:
        raise ValueError(f"data.curriculum.path {path} was built for another run ({'; '.join(differences)}): "
                         f"{again}, or set data.curriculum.path to another file")


def order(scored: list[Scored], drop_unsolved: bool = False) -> list[Scored]:
    """Solved-by-all dropped (and unsolved, if asked); the rest from easy (high pass rate) to hard; ties keep the
    original order."""
    kept = [s for s in scored if s.pass_rate < 1.0 and (s.pass_rate > 0.0 or not drop_unsolved)]
    return sorted(kept, key=lambda s: -s.pass_rate)


def main(argv: list[str] | None = None, prog: str | None = None, **agent_kwargs: Any) -> Path:
    from delegate.cli import add_recipe_arguments, load_config, setup_logging

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_recipe_arguments(parser, config_help="the training recipe (its data section and starting policy)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, help="default: the recipe's data.curriculum.samples, else 8")
    parser.add_argument("--drop-unsolved", action="store_true", default=None,
                        help="default: the recipe's data.curriculum.drop_unsolved, else false")
    parser.add_argument("--trajectories", type=Path, help="also write every sampled rollout here (JSONL records)")
    parser.add_argument("--adopt", action="store_true",
                        help="sample nothing: write the recipe's fingerprint for the existing --out file (one built "
                             "from this recipe's data and policy before fingerprints existed), with --samples and "
                             "--drop-unsolved as it was built")
    args = parser.parse_args(argv)
    setup_logging()
    recipe = load_config(parser, args, Recipe.from_yaml)

    from delegate.training.grpo import load_prompts

    spec = recipe.data.curriculum
    if args.samples is None:
        args.samples = spec.samples if spec is not None else 8
    if args.drop_unsolved is None:
        args.drop_unsolved = spec.drop_unsolved if spec is not None else False
    problems = [dict(row) for row in load_prompts(recipe)]
    found = recipe_fingerprint(recipe, problems, args.samples, args.drop_unsolved)
    out = Path(args.out)
    if args.adopt:
        if not out.is_file():
            raise FileNotFoundError(f"--adopt: {out} does not exist")
        log.warning("curriculum: adopting %s as built from this recipe's data and policy, unchecked -> %s", out,
                    write_fingerprint(out, found))
        return out
    agent_config = AgentConfig(planner=recipe.planner, coder=recipe.coder, executor=recipe.executor)
    with Agent(agent_config, **agent_kwargs) as agent:
        scored = pass_rates(agent, problems, args.samples, recipe.planner.batch_size, args.trajectories)
    ordered = order(scored, args.drop_unsolved)
    write_scored(ordered, out)
    write_fingerprint(out, found)
    log.info("curriculum: kept %d of %d problems (%d solved by every sample) -> %s", len(ordered), len(scored),
             sum(s.pass_rate == 1.0 for s in scored), out)
    return out


if __name__ == "__main__":
    main()
