"""Two processes under `accelerate launch` (gloo on CPU): ranks whose rollouts take different numbers of rounds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [f"What is {i} times 7?" for i in range(8)]


ZERO3 = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED", "num_machines": 1,
         "num_processes": 2, "machine_rank": 0, "mixed_precision": "no", "use_cpu": False,
         "deepspeed_config": {"zero_stage": 3, "zero3_init_flag": False, "offload_optimizer_device": "none",
                              "offload_param_device": "none"}}


@pytest.mark.slow
@pytest.mark.parametrize("launch, gather", [("ddp", True), ("zero3", True), ("zero3", False)],
                         ids=["ddp", "zero3-gathered", "zero3-lockstep"])
def test_two_ranks_with_different_rounds_finish_in_step(tmp_path, tiny_model_dir, launch, gather):
    """DDP; ZeRO-3 gathering the weights for generation (TRL's default); ZeRO-3 fetching shards in every forward
    pass (`ds3_gather_for_generation: false`), where generation itself is a collective and ranks pad to keep step."""
    if launch == "zero3":
        pytest.importorskip("deepspeed")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "answer": str(7 * i)}) + "\n" for i, q in enumerate(QUESTIONS)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "planner": {"model": str(tiny_model_dir), "device": "cpu", "protocol": "code", "temperature": 1.0,
                    "max_completion_tokens": 96},
        "coder": {"model": str(tiny_model_dir), "device": "cpu"},
        "executor": {"timeout_s": 5.0, "workers": 2},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "data": {"path": str(data)},
        "rewards": {"schedule": [[0, {"length": 1.0}]]},
        "groups": {"filter": True},
        "grpo": {"output_dir": str(tmp_path / "out"), "max_steps": 3, "per_device_train_batch_size": 4,
                 "num_generations": 4, "learning_rate": 0.05, "logging_steps": 1, "report_to": "none",
                 "save_strategy": "no", "beta": 0.0, "seed": 0, "use_cpu": True,
                 "ds3_gather_for_generation": gather},
        "logging": {"sample_every": 0},
    }))
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": "1"}
    # `--multi_gpu` on a machine without a GPU starts torchrun processes that take gloo on the CPU (accelerate's
    # `--cpu` with several processes wants mpirun).
    if launch == "ddp":
        how = ["--multi_gpu", "--num_processes", "2"]
    else:
        (tmp_path / "zero3.yaml").write_text(yaml.safe_dump(ZERO3))
        how = ["--config_file", str(tmp_path / "zero3.yaml")]
    done = subprocess.run([accelerate, "launch", *how, "--main_process_port", "0",
                           str(ROOT / "tests" / "scripts" / "two_ranks.py"), str(recipe), str(tmp_path / "rec")],
                          env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "rec" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [s["step"] for s in ranks[0]] == [s["step"] for s in ranks[1]] == [1, 2, 3]
    for zero, one in zip(*ranks, strict=True):
        assert zero["lora_sha256"] == one["lora_sha256"]  # the two ranks' weights are identical after every step
        assert zero["partitioned"] == (launch == "zero3")  # ZeRO-3 really sharded them (compared gathered)
        assert zero["calls"] == [2, 2, 2, 2] and one["calls"] == [0, 0, 0, 0]
        assert zero["rounds"] == one["rounds"] == 3  # rank 1 kept step for two rounds with nothing to generate
        assert zero["idle_rounds"] == 0 and one["idle_rounds"] == 2
    assert len({s["lora_sha256"] for s in ranks[0]}) > 1  # and training did move them

    history = json.loads((tmp_path / "rec" / "log_history.json").read_text())
    logs = [e for e in history if "tools/calls_per_rollout" in e]
    assert len(logs) == 3
    for entry in logs:  # gathered over both ranks: 4 rollouts with 2 calls and 4 with none
        assert entry["tools/calls_per_rollout"] == pytest.approx(1.0)
        assert entry["rollout/mean_rounds"] == pytest.approx(2.0)  # 3 rounds on rank 0, 1 on rank 1
        assert entry["tools/status_ok"] == pytest.approx(1.0)  # 8 clean calls over 8 rollouts
        assert entry["sync/rounds"] == 3 and entry["sync/idle_rounds_max"] == 2
        assert entry["groups/removed_frac"] == pytest.approx(0.5)  # rank 0's two groups all score alike


@pytest.mark.slow
def test_fsdp_ranks_with_different_rounds_generate_in_lockstep(tmp_path, tiny_model_dir):
    """FSDP 2 on two CPU processes: every forward pass all-gathers shards, so the rank with no tool calls must keep
    making (empty) generation calls while the other delegates. The same script with `--no-lockstep` hangs until
    killed (checked by hand: 90 s, no output), which is the deadlock the lockstep prevents."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "tests" / "scripts" / "fsdp_lockstep.py"), str(tiny_model_dir),
                           str(tmp_path / "rec")], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    zero, one = (json.loads((tmp_path / "rec" / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert zero["sharded"] and one["sharded"]
    assert zero["calls"] == [2, 2, 2, 2] and one["calls"] == [0, 0, 0, 0]
    assert zero["rounds"] == one["rounds"] == 3 and zero["idle_rounds"] == 0 and one["idle_rounds"] == 2
    assert zero["answers"] == one["answers"] == ["42"] * 4
