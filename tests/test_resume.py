"""A training run killed with SIGKILL and restarted continues from its last checkpoint: same step counter, same
place in the (unshuffled, curriculum-ordered) data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [f"Problem number {i}: what is {i} plus {i}?" for i in range(6)]


def recipe(tmp_path: Path, tiny_model_dir: Path, **grpo_fields) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": str(2 * i)}) + "\n" for i, q in enumerate(QUESTIONS)))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "planner": {"model": str(tiny_model_dir), "device": "cpu", "protocol": "code", "temperature": 1.0,
                    "max_completion_tokens": 32},
        "coder": {"model": str(tiny_model_dir), "device": "cpu"},
        "executor": {"timeout_s": 5.0, "workers": 2},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "data": {"path": str(data)},
        "logging": {"sample_every": 1, "samples_per_step": 1},
        "grpo": {"output_dir": str(tmp_path / "out"), "max_steps": 5, "per_device_train_batch_size": 4,
                 "num_generations": 4, "learning_rate": 1e-3, "beta": 0.0, "use_cpu": True, "report_to": "none",
                 "save_strategy": "steps", "save_steps": 1, "shuffle_dataset": False, "logging_steps": 1,
                 **grpo_fields},
    }))
    return path


def launch(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "training" / "grpo.py"), "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def sampled_question(out: Path, step: int) -> str:
    return json.loads((out / "samples" / f"step-{step:06d}.jsonl").read_text().splitlines()[0])["question"]


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_step_and_data_position(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    first = launch(recipe(tmp_path, tiny_model_dir))
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-2" / "trainer_state.json").exists():
        assert first.poll() is None, "the run ended before its second checkpoint"
        assert time.monotonic() < deadline, "no second checkpoint within 240 s"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (out / "checkpoint-5").exists()

    second = launch(recipe(tmp_path, tiny_model_dir, resume_from_checkpoint=True))
    assert second.wait(timeout=300) == 0
    state = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    # One prompt per step, in file order: step k trains question k, before and after the kill.
    assert [sampled_question(out, step) for step in range(5)] == QUESTIONS[:5]
