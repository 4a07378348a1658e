"""`bench/trl_loop.py` drives TRL's own `tools=` loop (GRPOTrainer._generate, TRL 1.16) on the tiny model: the forced
planner's tool calls are parsed by TRL, each calls the coder and the sandbox once, and the rounds write the planned
tokens; so the benchmark's TRL row measures what it says (and breaks loudly if TRL's private loop changes)."""

from __future__ import annotations

from delegate.coder import CoderConfig, build_coder
from delegate.executor import Sandbox, SandboxConfig
from delegate.training.tiny import build_model, build_tokenizer
from tests.scripted import PlannedScript


def test_trl_loop_makes_every_planned_call_through_the_tool_function():
    from bench.trl_loop import trl_tools_rollouts

    tokenizer = build_tokenizer()
    model = build_model(tokenizer).eval()
    coder = build_coder(CoderConfig(model="tiny", device="cpu", max_new_tokens=4, cache_size=0), model=model,
                        tokenizer=tokenizer)

    class Programs:  # a real program per call: the random coder writes none
        def __init__(self, box):
            self.box = box
            self.codes: list[str] = []

        def run_many(self, codes):
            self.codes += codes
            return self.box.run_many([f"print({len(self.codes)} * 7)" for _ in codes])

    def words(i: int, n: int) -> list[int]:
        return tokenizer.encode(" ".join(f"step {i} then {k} more," for k in range(n)), add_special_tokens=False)[:n]

    with Sandbox(SandboxConfig(timeout_s=10.0)) as box:
        programs = Programs(box)
        seconds, planner_tokens, calls = trl_tools_rollouts(model, tokenizer, coder, programs, 2, 60, words,
                                                            PlannedScript, lambda: None)
    assert calls == 4 and len(programs.codes) == 4  # 2 rollouts x 2 calls, each one tool call and one job
    assert planner_tokens == 2 * (3 * 60 + 1)  # three rounds of 60 planned tokens and the final EOS
    assert seconds > 0 and model.config.use_cache and not model.training  # the trainer's settings undone
