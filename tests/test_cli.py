"""The `delegate` command as a user runs it: the installed executable in its own process (`pip install -e .`
writes it from `[project.scripts]`), each subcommand's help, a wrong `--set` field named in one line with exit
status 2, `solve --seed` answering the same way twice, and prompts that a working directory cannot swap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DELEGATE = Path(sys.executable).parent / "delegate"
TINY_RECIPE = ROOT / "training" / "recipes" / "tiny-cpu.yaml"
COMMANDS = ("fetch", "solve", "eval", "train", "view", "demo")


def delegate(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    assert DELEGATE.is_file(), f"no {DELEGATE}: `pip install -e .` writes it from pyproject's [project.scripts]"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([str(DELEGATE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_command_lists_its_subcommands_and_refuses_an_unknown_one():
    listed = delegate("--help")
    assert listed.returncode == 0
    for name in COMMANDS:
        assert f"\n  {name} " in listed.stdout, listed.stdout
    unknown = delegate("fly")
    assert unknown.returncode == 2 and "unknown command 'fly'" in unknown.stderr


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_has_its_help(name):
    done = delegate(name, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: delegate {name} "), done.stdout
    if name in ("solve", "eval", "train"):  # the shared recipe arguments
        assert "--config RECIPE.yaml" in done.stdout and "--set SECTION.FIELD=VALUE" in done.stdout
    if name == "demo":
        assert "--set SECTION.FIELD=VALUE" in done.stdout


def test_eval_with_a_suite_is_the_generalization_table():
    done = delegate("eval", "--suite", "unseen", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: delegate eval --suite ") and "--pair" in done.stdout, done.stdout


@pytest.mark.parametrize("args, field", [
    (("solve", "--config", str(TINY_RECIPE), "--set", "planner.temprature=0.5", "2 + 2?"), "planner.temprature"),
    (("solve", "--config", str(TINY_RECIPE), "--set", "coder.max_new_tokens=-3", "2 + 2?"), "coder.max_new_tokens"),
    (("train", "--config", str(TINY_RECIPE), "--set", "grpo.max_stepz=3"), "grpo.max_stepz"),
    (("demo", "--set", "planner_epoch=5"), "planner_epoch"),
    # before any data loads: `gsm8k` would be a hub download, which fails otherwise on a machine without one
    (("eval", "--config", str(TINY_RECIPE), "--data", "gsm8k", "--set", "executor.timeout_z=2"), "executor.timeout_z"),
], ids=["solve-unknown-field", "solve-bad-value", "train-unknown-field", "demo-unknown-field", "eval-unknown-field"])
def test_a_bad_set_field_exits_2_with_one_line_naming_it(args, field):
    done = delegate(*args)
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"delegate {args[0]}: error: --set {field}") and "Traceback" not in done.stderr


@pytest.mark.parametrize("module, args", [
    ("delegate.training.curriculum", ("--out", "runs/never.jsonl")),
    ("delegate.training.worked", ("--out", "runs/never.jsonl")),
    ("delegate.training.sft", ("--records", "runs/never.jsonl", "--out", "runs/never")),
    ("bench.real_chat_speed", ("--data", "never.jsonl")),
])
def test_the_other_recipe_commands_share_the_parser(module, args):
    """The commands without a `delegate` subcommand read `--config`/`--set` through the same `load_config`."""
    done = subprocess.run([sys.executable, "-m", module, "--config", str(TINY_RECIPE), *args, "--set",
                           "planner.temprature=0.5"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in done.stderr.strip().splitlines() if "[WARNING]" not in line]  # deepspeed's accelerator
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert ": error: --set planner.temprature=0.5: planner.temprature" in lines[0]


def solve(model: Path, seed: int, cwd: Path = ROOT, *extra: str) -> str:
    done = delegate("solve", "--config", str(TINY_RECIPE), "--set", f"planner.model={model}",
                    "--set", f"coder.model={model}", "--set", "planner.max_completion_tokens=32",
                    "--seed", str(seed), "--show", *extra, "What is 2 + 3?", cwd=cwd)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
    return done.stdout


def test_seeded_solve_answers_the_same_and_a_working_directory_cannot_swap_its_prompts(tiny_model_dir, tmp_path):
    """The tiny recipe samples at temperature 1.0 from random weights: every token is a draw, so the transcript
    shows whether the seed and the prompt were the same. A folder with its own `prompts/` is the working directory
    of the second run: its files change nothing; naming one by an explicit `./` path does."""
    own = tmp_path / "project"
    (own / "prompts").mkdir(parents=True)
    for name in ("planner_request.txt", "coder.txt"):
        (own / "prompts" / name).write_text("You are a different assistant. Never call any tool.\n")
    first = solve(tiny_model_dir, 7)
    assert solve(tiny_model_dir, 7, own) == first
    assert solve(tiny_model_dir, 8) != first
    assert solve(tiny_model_dir, 7, own, "--set", "planner.prompt=./prompts/planner_request.txt") != first


def test_prompt_names_resolve_in_the_package_whatever_the_working_directory(tmp_path, monkeypatch):
    from importlib.resources import files

    from delegate.coder import CoderConfig
    from delegate.coder.config import resolve

    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "coder.txt").write_text("not the package's prompt\n")
    (tmp_path / "mine.txt").write_text("my own prompt\n")
    monkeypatch.chdir(tmp_path)
    packaged = files("delegate.prompts").joinpath("coder.txt").read_text()
    assert CoderConfig().prompt_text() == packaged
    assert resolve("coder.txt").read_text() == packaged
    assert resolve("prompts/variants/coder_v1.txt").read_text()
    assert CoderConfig(prompt="./prompts/coder.txt").prompt_text() == "not the package's prompt\n"
    assert resolve(str(tmp_path / "mine.txt")).read_text() == "my own prompt\n"
    for wrong in ("mine.txt", "prompts/mine.txt", "./no-such.txt"):
        with pytest.raises(FileNotFoundError, match="no such prompt"):
            resolve(wrong)


def test_no_benchmark_file_shadows_an_installed_module():
    """`python bench/x.py` used to put bench/ first on the path, where `bench/kernels.py` hid the `kernels` package
    that transformers imports. A benchmark's name must not be an installed top-level module's (a folder of this
    repository, such as `executor/`, is no installed module)."""
    import importlib.util

    for path in sorted((ROOT / "bench").glob("*.py")):
        spec = importlib.util.find_spec(path.stem) if path.stem != "__init__" else None
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        assert origin is None or ROOT in origin.parents, f"bench/{path.name} shadows the installed {origin}"


@pytest.mark.parametrize("how", ["script", "module"])
def test_a_benchmark_runs_as_a_script_and_as_a_module(how):
    """The README's `python -m bench.real_protocols` (and the older `python bench/real_protocols.py`) get past their
    imports: the repository, not bench/, is on the path."""
    command = ["bench/real_protocols.py"] if how == "script" else ["-m", "bench.real_protocols"]
    done = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("usage:"), done.stderr[-2000:]
