"""Run under `torchrun --nproc_per_node 2` (gloo on CPU): the tiny model sharded with FSDP 2 (`fully_shard`: each
forward pass all-gathers a layer's shards, a collective), and the rollout as the trainer runs it under FSDP
(`PlannerRollout.run` with `lockstep`), rank 0 delegating twice and rank 1 never. accelerate runs FSDP only on
accelerators (on CPUs it falls back to MULTI_CPU), so this drives `torch.distributed` directly.

    torchrun --standalone --nproc_per_node 2 tests/scripts/fsdp_lockstep.py MODEL_DIR OUT_DIR

Writes OUT_DIR/rank-<r>.json: whether the weights were sharded, generation rounds, idle rounds, calls, answers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, AutoTokenizer

from delegate.executor import Sandbox
from delegate.executor.config import SandboxConfig
from delegate.planner import RolloutEngine, build_protocol
from delegate.planner.config import PlannerConfig
from delegate.planner.sync import TorchDistributedSync
from delegate.training.rollout import PlannerRollout
from tests.scripted import Env, Say, ScriptedText

QUESTIONS = [f"What is {i} times 7?" for i in range(4)]


def main() -> None:
    model_dir, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = all(isinstance(p, DTensor) for p in model.parameters())  # each rank holds half of each weight
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    planner = PlannerConfig(model=model_dir, device="cpu", protocol="code", temperature=1.0, max_completion_tokens=96)
    protocol = build_protocol(planner.protocol, planner.markers, planner.max_request_chars, tokenizer)
    processors: list = []
    with Sandbox(SandboxConfig(timeout_s=5.0, workers=2)) as sandbox:
        rollout = PlannerRollout(planner, protocol, tokenizer, sandbox, None, processors)
        engine = RolloutEngine(protocol, None, tokenizer, sandbox)
        delegate_twice = [Say("```python\nprint(6 * 7)\n```\n"), Env("\n```\n"), Say("```python\nprint(42)\n```\n"),
                          Env("\n```\n"), Say("\\boxed{42}")]
        script = delegate_twice if rank == 0 else [Say("\\boxed{42}")]
        processors.append(ScriptedText(tokenizer, {tuple(engine.prompt_ids(rollout.system_prompt, q)): script
                                                   for q in QUESTIONS}))
        sync = TorchDistributedSync("cpu")
        lockstep = None if "--no-lockstep" in sys.argv else sync  # without it rank 0's second round waits forever
        trajectories = rollout.run(model.eval(), QUESTIONS, sync, lockstep=lockstep)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank-{rank}.json").write_text(json.dumps({
        "sharded": sharded,
        "rounds": rollout.rounds, "idle_rounds": rollout.idle_rounds,
        "calls": [len(t.tool_calls) for t in trajectories], "answers": [t.answer for t in trajectories]}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
