"""The toy world in request mode (the demo without its code-mode half), end to end: copy pre-training, SFT,
curriculum, GRPO through training/grpo.py, and the held-out evaluation before and after. About 35 minutes on this
project's 2-core AMD EPYC machine (float32; 12 minutes on an earlier machine under bf16 autocast).

Until 2026-12-02 CPU training ran under TRL's default bf16 autocast, whose rounding differs between CPUs: seed 0
measured +37 points sampled on one machine and +9.5 (2.5 % -> 12 %) on CI's. CPU
training is now float32 (`training.recipe.cpu_precision`). Seed 0 in float32 on this machine: sampled 24 % -> 70 %
(+46), greedy 0 % -> 76.5 % (+76.5), the SFT planner's requests 90 % exact; seed 1 in float32 failed as CI's run
had (+11: its coder's copying never formed, 22 % of programs exact), so the margins below can still be missed by a
seed or a CPU whose rounding lands there (`bench/results/toy-noise-cpu.md`). Under bf16, seeds 1 to 6
(`bench/results/toy-noise-cpu.md`) gained +21 to +36 sampled (mean +29.6, sd 5.3) and +41.5 to +64.5 greedy; the
sampling noise of one such difference is about 6 points (one sd). The margins below (20 sampled, 35 greedy) are
under the lowest gain of every seed whose coder learned to copy; every run measured ended delegating on 97.5 % or
more."""

from __future__ import annotations

import pytest

from delegate.planner import Agent
from delegate.training.toy import demo

SAMPLED_MARGIN, GREEDY_MARGIN = 0.20, 0.35


@pytest.mark.slow
def test_reduced_toy_world_learns_to_delegate(tmp_path):
    results = demo.run(demo.WorldConfig(out=tmp_path, modes=("request",)))["request"]
    before, after = results["before"]["sampled"], results["after"]["sampled"]
    assert after.accuracy >= before.accuracy + SAMPLED_MARGIN, (before, after)
    assert results["after"]["greedy"].accuracy >= results["before"]["greedy"].accuracy + GREEDY_MARGIN, results
    assert before.tool_call_rate < 0.6 and after.tool_call_rate >= 0.9, (before, after)
    assert (tmp_path / "results.md").read_text().count("| request |") == 6  # 4 accuracy rows, 2 of skills
    skills = results["skills"]
    assert skills["before"].coder >= 0.75 and skills["after"].box >= 0.8, skills  # lowest of seeds 0-6: 81 %, 85.5 %
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    with Agent.from_config(tmp_path / "grpo-request" / "agent.yaml") as agent:
        solution = agent.solve("What is 123456789 * 987654321?")
    assert solution.trajectory.tool_calls  # the trained planner delegates the big product
