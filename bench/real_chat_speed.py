"""Speed with a real model (issue 28, item 5): the same questions, sampled, in the `chat` protocol (Qwen2.5's
native tool calls to `ask_coder(request)`), through our engine and through TRL's own `tools=` loop; one table.

    python -m bench.real_chat_speed --config training/recipes/qwen2.5-0.5b-request.yaml \
        --data ../shared/data/gsm8k/test.jsonl --big-values --rollouts 64 [--set SECTION.FIELD=VALUE ...]

Both rows use one planner model (loaded once), the recipe's coder and one sandbox, the recipe's temperature,
completion budget and call limit, the chat protocol's system prompt and the same tool description. Ours:
`Agent.solve_many` (every round batched, tool calls batched, the planner graphed on a GPU if the recipe says so).
TRL's: `GRPOTrainer(tools=[ask_coder])._generate` (TRL 1.16's private loop, called as `_generate_and_score_completions`
calls it), whose tool function asks the coder for one program and runs it in the sandbox, one call at a time; the
tokenizer takes TRL's copy of Qwen2.5's chat template, which carries the response schema TRL parses tool calls with.
Sampling is free in both, so the rows write different tokens: the table gives planner tokens a second beside the
seconds, and the calls each row made.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/x.py`: the repository first on the path, in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # (whose files would shadow installed packages)


def ours(agent: Any, questions: list[str]) -> tuple[float, int, int]:
    start = time.perf_counter()
    solutions = agent.solve_many(questions)
    seconds = time.perf_counter() - start
    trajectories = [s.trajectory for s in solutions]
    return seconds, sum(sum(t.env_mask) for t in trajectories), sum(len(t.tool_calls) for t in trajectories)


def trls(agent: Any, model: Any, questions: list[str]) -> tuple[float, int, int]:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import qwen2_5_chat_template

    planner, calls = agent.config.planner, []

    def ask_coder(request: str) -> str:
        """Ask a programmer to compute something. Describe the value you need in plain words; they write and run a
        Python program and return what it prints.

        Args:
            request: the value to compute, in plain words
        """
        calls.append(request)
        code = agent.coder.write([request])[0]  # one call at a time: a tool function's view
        return agent.sandbox.run_many([code])[0].render()

    tokenizer = copy.deepcopy(agent.tokenizer)
    tokenizer.chat_template = qwen2_5_chat_template
    prompts = [[{"role": "system", "content": agent.system_prompt}, {"role": "user", "content": q}]
               for q in questions]
    cuda = model.device.type == "cuda"
    config = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(questions),
                        num_generations=len(questions), max_completion_length=planner.max_completion_tokens,
                        temperature=planner.temperature, top_p=planner.top_p, report_to="none", beta=0.0,
                        gradient_checkpointing=False, use_cpu=not cuda, bf16=cuda and planner.dtype == "bfloat16",
                        max_tool_calling_iterations=planner.max_tool_calls)
    state = model.training, model.config.use_cache
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=config,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          processing_class=tokenizer, tools=[ask_coder])
    model.train(state[0])  # the trainer's settings, undone for our row (which shares the model)
    model.config.use_cache = state[1]
    trainer._sync_tool_dicts = [{"ask_coder": ask_coder} for _ in prompts]  # as `_generate_and_score_completions`
    trainer._async_tool_dicts = [{} for _ in prompts]
    trainer._generate(prompts[:2])  # warm-up, as for our row
    calls.clear()
    sync()
    start = time.perf_counter()
    output = trainer._generate(prompts)
    sync()
    seconds = time.perf_counter() - start
    tool_mask = output[2]  # TRL 1.16's order: prompt ids, completion ids, tool mask, ...
    return seconds, sum(sum(mask) for mask in tool_mask), len(calls)


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    from delegate.cli import add_recipe_arguments, load_config

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_recipe_arguments(parser, config_help="a recipe: its planner, coder and executor sections")
    parser.add_argument("--data", required=True)
    parser.add_argument("--big-values", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rollouts", type=int, default=64)
    args = parser.parse_args(argv)

    from delegate.planner import Agent, AgentConfig
    from delegate.planner.agent import load_planner_model
    from delegate.training.data import load_problems

    config = load_config(parser, args, AgentConfig.from_yaml, extra=["planner.protocol=chat"])
    questions = [row["prompt"] for row in load_problems(args.data, big_values=args.big_values, seed=args.seed,
                                                         limit=args.rollouts)]
    planner = config.planner
    model = load_planner_model(planner.model, planner.adapter, planner.device, planner.dtype)
    rows = []
    with Agent(config, model=model) as agent:
        agent.solve_many(questions[:2])  # warm-up: graph capture, the coder's first call, the sandbox's fork
        rows.append(("ours: Agent.solve_many", *ours(agent, questions)))
        rows.append(("TRL's tools= loop (GRPOTrainer._generate)", *trls(agent, model, questions)))
    print(f"{len(questions)} rollouts, chat protocol, {planner.model}, temperature {planner.temperature}, "
          f"up to {planner.max_completion_tokens} tokens and {planner.max_tool_calls} calls")
    print(f"{'row':45} {'seconds':>8} {'planner tokens':>15} {'tokens/s':>9} {'calls':>6} {'calls/rollout':>14}")
    for name, seconds, tokens, calls in rows:
        print(f"{name:45} {seconds:8.2f} {tokens:15,} {tokens / seconds:9,.0f} {calls:6} "
              f"{calls / len(questions):14.2f}")
    (_, ours_s, ours_t, _), (_, trl_s, trl_t, _) = rows
    print(f"ours against TRL's loop: {trl_s / ours_s:.2f}x in seconds, {(ours_t / ours_s) / (trl_t / trl_s):.2f}x "
          "in planner tokens a second")


if __name__ == "__main__":
    main()
