"""The block driver's state travels whole: a run's newest complete checkpoint, packed on the device into pieces a
device call can return, comes back here, goes out again and is restored byte for byte for the next block."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from experiments import block


@pytest.fixture
def places(tmp_path, monkeypatch):
    """The device's root and this checkout's carry and state folders, all under tmp_path."""
    def device(name: str) -> None:
        root = tmp_path / name
        monkeypatch.setattr(block, "ROOT", root)
        monkeypatch.setattr(block, "INCOMING", root / "incoming")
        monkeypatch.setattr(block, "RUNS", root / "runs")
        monkeypatch.setattr(block, "EVALS", root / "eval")

    monkeypatch.setattr(block, "STATE", tmp_path / "here" / "state")
    monkeypatch.setattr(block, "CARRY", tmp_path / "here" / ".carry")
    device("first")
    return device


def checkpoint(folder: Path, step: int, *, complete: bool = True) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(os.urandom(3 << 20))
    (path / "optimizer.pt").write_bytes(os.urandom(40 << 20))  # past two pieces of 15 MiB
    (path / "rng_state.pth").write_bytes(os.urandom(1000))
    (path / "agent.yaml").write_text("planner: {}\n")
    (path / "tokenizer.json").write_text("{}")  # the model has it: left behind
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_a_checkpoint_goes_back_and_out_again_whole(places, tmp_path):
    run = {"name": "code-long", "recipe": "training/recipes/qwen2.5-0.5b-code.yaml"}
    out = block.RUNS / run["name"]
    saved = checkpoint(out, 40)
    checkpoint(out, 20)
    checkpoint(out, 60, complete=False)  # killed while saving: not the state to resume from
    (out / "heldout.jsonl").write_text(json.dumps({"step": 0, "set": "bv", "accuracy": 0.1}) + "\n")
    (out / "curriculum.jsonl").write_text('{"prompt": "q"}\n')
    (out / "curriculum.jsonl.meta.json").write_text("{}")

    returned = tmp_path / "returned"
    block.pack(run, returned)
    pieces = sorted(returned.iterdir())
    assert len(pieces) == 3 and all(p.stat().st_size <= 16 << 20 for p in pieces)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in pieces)  # names a device call returns

    block.unpack(str(returned))  # here
    kept = block.STATE / run["name"]
    assert (kept / "step").read_text() == "40" and (kept / "heldout.png").is_file()

    places("second")  # the next block, on a bare machine
    carried = block.split_file(kept / "state.tar", block.CARRY / "state", f"{run['name']}.state")
    block.receive([str(p) for p in carried])
    block.restore(run)
    back = block.RUNS / run["name"]
    assert sorted(p.name for p in back.glob("checkpoint-*")) == ["checkpoint-40"]
    for name in ("adapter_model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json", "agent.yaml"):
        assert (back / "checkpoint-40" / name).read_bytes() == (saved / name).read_bytes()
    assert not (back / "checkpoint-40" / "tokenizer.json").exists()
    for name in ("heldout.jsonl", "curriculum.jsonl", "curriculum.jsonl.meta.json"):
        assert (back / name).read_bytes() == (out / name).read_bytes()


def test_plan_placeholders_name_the_device_folders(places):
    plan = {"set": ["data.path=${DATA}/gsm8k/train.jsonl"], "runs": []}
    run = {"name": "r", "recipe": "x.yaml", "set": ["planner.adapter=${RUNS}/sft"]}
    args = block.recipe_args(plan, run)
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert sets == [f"data.path={block.ROOT}/data/gsm8k/train.jsonl", f"planner.adapter={block.RUNS}/sft",
                    f"grpo.output_dir={block.RUNS}/r", f"data.curriculum.path={block.RUNS}/r/curriculum.jsonl"]
    assert "data.curriculum.path" not in " ".join(block.recipe_args(plan, {**run, "curriculum": False}))


def test_the_shipped_plans_load_as_recipes(places):
    """Every run of every plan is a valid recipe with its overrides: a mistyped field fails here, not on the GPU."""
    from delegate.training.recipe import Recipe

    root = Path(__file__).resolve().parent.parent
    plans = sorted((root / "experiments" / "plans").glob("*.yaml"))
    assert plans
    for path in plans:
        plan = block.load_plan(path)
        for run in plan["runs"]:
            args = block.recipe_args(plan, run)
            recipe = Recipe.from_yaml(root / args[1], [args[i + 1] for i, a in enumerate(args) if a == "--set"])
            assert recipe.grpo["output_dir"] == str(block.RUNS / run["name"])
