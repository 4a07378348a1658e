"""The installed package lives under one name, `delegate`: a wheel puts no generic top-level package (`training`,
`planner`, ...) into site-packages, and works from a directory that has its own `training/` folder."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHECK = textwrap.dedent("""
    import sys
    import training  # the user's own folder, not ours
    assert training.MARKER == "the user's", training.__file__

    import delegate
    from delegate import Agent, Sandbox, SandboxConfig
    from delegate.coder.config import resolve
    from delegate.training import grpo, rewards

    target = sys.argv[1]
    for module in (delegate, grpo, rewards, sys.modules[Agent.__module__], sys.modules[Sandbox.__module__]):
        assert module.__file__.startswith(target), module.__file__  # the wheel's copy, not the checkout's
    assert resolve("prompts/planner_request.txt").read_text()  # the prompts travel with the package
    assert not {"planner", "coder", "executor"} & set(sys.modules)  # nothing bare was imported on the way
    with Sandbox(SandboxConfig(timeout_s=10)) as sandbox:  # the sandbox's server starts from the wheel too
        result = sandbox.run("print(6 * 7)")
    assert result.stdout == "42\\n", result
    print("ok")
""")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, timeout=300)
    return next(out.glob("delegate_rl-*.whl"))


def test_the_wheel_holds_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"delegate"}
    assert {"delegate/executor/server.py", "delegate/planner/agent.py", "delegate/training/grpo.py",
            "delegate/prompts/planner_request.txt", "delegate/training/chatml_tools.jinja"} <= set(names)


def test_the_installed_wheel_works_beside_a_users_own_training_folder(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    project = tmp_path / "my-project"  # a user's repository: its own training/ and planner/ folders
    for name in ("training", "planner"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text("MARKER = \"the user's\"\n")
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # the wheel first
    done = subprocess.run([sys.executable, "-c", CHECK, str(target)], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
    help_text = subprocess.run([sys.executable, "-m", "delegate.training.evaluate", "--help"], cwd=project, env=env,
                               capture_output=True, text=True, timeout=300)
    assert help_text.returncode == 0 and "--compare" in help_text.stdout, help_text.stderr[-2000:]
