"""A training run killed with SIGKILL and restarted continues exactly from its last checkpoint: same step counter,
same place in the (unshuffled, curriculum-ordered) data, and the same adapter weights, optimizer state and sampled
rollouts as the run that was not interrupted.

One run serves every test here (`killed_and_resumed`): it is killed once its third checkpoint is complete; that
checkpoint (and any later, partial one) is moved aside as what the uninterrupted run reached, so the last checkpoint
left is the second, as if the kill had come during step 3; the restarted run then trains steps 3 to 5. With
`shuffle_dataset: false`, one prompt a step and one seed, a restart from step 0 trains the same questions and, being
deterministic, reaches the same weights: only what the restarted process itself did tells it apart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [f"Problem number {i}: what is {i} plus {i}?" for i in range(6)]
# training/grpo.py's `main` with one more reward: the random tiny model earns the built-in ones alike within a group
# (no answer, no call), which leaves every step without a gradient and every weight at its start, where any resume
# would look exact. A reward that grows with the reply's length gives each step an update.
LAUNCHER = """
import sys
sys.path.insert(0, sys.argv[1])
from delegate.training import grpo
from delegate.training.rewards import REWARDS
REWARDS["length"] = lambda prompts, completions, **kwargs: [len(str(c)) / 100 for c in completions]
grpo.main(sys.argv[2:])
"""


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
        "rewards": {"schedule": [[0, {"length": 1.0, "format": 0.5}]]},
        "logging": {"sample_every": 1, "samples_per_step": 4},  # every rollout of a step: what was sampled
        "grpo": {"output_dir": str(tmp_path / "out"), "max_steps": 5, "per_device_train_batch_size": 4,
                 "num_generations": 4, "learning_rate": 1e-3, "beta": 0.0, "use_cpu": True, "report_to": "none",
                 "save_strategy": "steps", "save_steps": 1, "shuffle_dataset": False, "logging_steps": 1,
                 "seed": 0, **grpo_fields},
    }))
    return path


def launch(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, str(ROOT), "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def samples(out: Path, step: int) -> list[dict]:
    return [json.loads(line) for line in (out / "samples" / f"step-{step:06d}.jsonl").read_text().splitlines()]


@dataclass(frozen=True)
class Resumed:
    out: Path  # the restarted run's output directory
    uninterrupted: Path  # checkpoint-3 as the first run wrote it, before the kill
    sampled_at_step_2: list[dict]  # the first run's rollouts of step index 2 (global step 3)
    before_restart: dict[str, int]  # samples file -> st_mtime_ns, for the steps the second checkpoint covers


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, tiny_model_dir) -> Resumed:
    tmp_path = tmp_path_factory.mktemp("resume")
    out = tmp_path / "out"
    first = launch(recipe(tmp_path, tiny_model_dir))
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-3" / "agent.yaml").exists():  # written on save, after the trainer's own files
        assert first.poll() is None, "the run ended before its third checkpoint"
        assert time.monotonic() < deadline, "no third checkpoint within 300 s"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (out / "checkpoint-5").exists()

    uninterrupted = tmp_path / "uninterrupted"
    uninterrupted.mkdir()
    for checkpoint in out.glob("checkpoint-*"):
        if int(checkpoint.name.split("-")[1]) > 2:  # the third, and a fourth the kill may have cut short
            shutil.move(checkpoint, uninterrupted / checkpoint.name)
    before = {f"step-{step:06d}.jsonl": (out / "samples" / f"step-{step:06d}.jsonl").stat().st_mtime_ns
              for step in (0, 1)}
    resumed = Resumed(out, uninterrupted / "checkpoint-3", samples(out, 2), before)
    for later in (out / "samples").glob("step-*.jsonl"):  # what the restart must sample again, it must write again
        if int(later.stem.split("-")[1]) >= 2:
            later.unlink()

    second = launch(recipe(tmp_path, tiny_model_dir, resume_from_checkpoint=True))
    assert second.wait(timeout=300) == 0
    return resumed


@pytest.mark.slow
def test_a_killed_run_resumes_with_the_same_step_and_data_position(killed_and_resumed):
    out = killed_and_resumed.out
    state = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    # One prompt per step, in file order: step k trains question k, before and after the kill.
    assert [samples(out, step)[0]["question"] for step in range(5)] == QUESTIONS[:5]


@pytest.mark.slow
def test_a_resumed_run_trains_only_the_steps_after_its_checkpoint(killed_and_resumed):
    """The restarted process sampled no step its checkpoint already covers (a restart from step 0 reaches the
    same weights here, but samples and rewrites steps 0 and 1)."""
    out = killed_and_resumed.out
    assert {name: (out / "samples" / name).stat().st_mtime_ns
            for name in killed_and_resumed.before_restart} == killed_and_resumed.before_restart
    assert samples(out, 2)[0]["step"] == 2  # and it did sample the step after its checkpoint (removed before)


@pytest.mark.slow
def test_a_resumed_step_equals_the_uninterrupted_one(killed_and_resumed):
    """Step 3 trained after the restart equals step 3 of the run before the kill: the same rollouts (the RNG came
    back from `rng_state.pth`), and, after the update, the same adapter weights and Adam moments (so the adapter
    and the optimizer state came back from checkpoint-2). On one machine the two agree exactly; the tolerance
    (1e-5 relative) is far below what one changed sample or one missing Adam moment does to them."""
    from safetensors.torch import load_file

    resumed, uninterrupted = killed_and_resumed.out / "checkpoint-3", killed_and_resumed.uninterrupted
    assert [s["completion_ids"] for s in samples(killed_and_resumed.out, 2)] == [
        s["completion_ids"] for s in killed_and_resumed.sampled_at_step_2]

    weights, expected = (load_file(str(c / "adapter_model.safetensors")) for c in (resumed, uninterrupted))
    assert weights.keys() == expected.keys()
    assert any(v.abs().sum() > 0 for k, v in expected.items() if "lora_B" in k)  # trained: PEFT starts B at zero
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-9, msg=name)

    optimizer, expected = (torch.load(c / "optimizer.pt", weights_only=True)["state"]
                           for c in (resumed, uninterrupted))
    assert optimizer.keys() == expected.keys() and len(expected) == len(weights)
    for index, moments in expected.items():
        assert optimizer[index]["step"].item() == moments["step"].item() == 3  # not 1 after a fresh optimizer
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(optimizer[index][key], moments[key], rtol=1e-5, atol=1e-15,
                                       msg=f"{index} {key}")


def test_resume_skips_a_checkpoint_killed_while_it_was_written(tmp_path):
    from delegate.training.checkpoints import latest_complete_checkpoint

    for step, state in ((1, "{}"), (2, '{"global_step": 2}'), (3, '{"global_st'), (4, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-10.tmp").mkdir()  # not a checkpoint: no step number
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    with pytest.raises(ValueError, match="no complete checkpoint"):
        latest_complete_checkpoint(tmp_path / "checkpoint-4")
