"""TRL's own `tools=` loop, timed: `GRPOTrainer._generate` (TRL 1.16) with the coder and the sandbox wrapped as one
tool function, the planner forced to write Qwen2.5's tool calls, for `bench/gpu.py rollout --trl-loop`.

TRL's loop generates every rollout of a round in one `generate` call, parses each completion's tool calls with the
chat template's response schema, calls the tool functions one call at a time, appends the results through the chat
template and generates again from the whole prefix (no KV cache kept). The planner here is the benchmark's random
model: a `PlannedScript`, added to its `generate` for TRL's own calls only (the coder shares the model), makes it
write, per round, as many tokens as the engine's rows, ending with `<tool_call>{"name": "compute", ...}</tool_call>`
and EOS, or with the answer in the last round. The tokenizer takes Qwen2.5's chat template (TRL ships it, with the
response schema that parses its tool calls); everything else is TRL's code: `_generate` is its private method,
called as `_generate_and_score_completions` calls it after building the per-rollout tool dictionaries, which is
done here the same way.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from typing import Any

from transformers import LogitsProcessorList


def trl_tools_rollouts(model: Any, tokenizer: Any, coder: Any, sandbox: Any, count: int, segment_tokens: int,
                       words: Any, planned_script: Any, sync: Any) -> tuple[float, int, int]:
    """Seconds for `count` rollouts of 3 rounds and 2 tool calls each through TRL's loop; planner tokens; calls."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import qwen2_5_chat_template

    calls = []

    def compute(request: str) -> str:
        """Compute one value with a program written for it and run in the sandbox.

        Args:
            request: the value wanted, in plain words.
        """
        calls.append(request)
        code = coder.write([request])[0]  # the coder at batch 1 and one sandbox job: a tool function's view
        return sandbox.run_many([code])[0].render()

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = qwen2_5_chat_template
    questions = [f"Question {i}: a farm holds {10**9 + 7 * i} eggs and sells {3 * i + 1} boxes of {12 + i % 5}. "
                 + "How many eggs are left? " * 8 for i in range(count)]
    prompts = [[{"role": "user", "content": q}] for q in questions]
    config = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=2, num_generations=2,
                        max_completion_length=4 * segment_tokens + 256, temperature=1.0, report_to="none",
                        gradient_checkpointing=False, beta=0.0, use_cpu=model.device.type == "cpu",
                        bf16=model.device.type == "cuda", max_tool_calling_iterations=4, logging_steps=1)
    state = model.training, model.config.use_cache
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=config,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          processing_class=tokenizer, tools=[compute])
    model.train(state[0])  # the trainer's settings, undone for the other rows (which share the model)
    model.config.use_cache = state[1]
    prompt_ids = trainer._tokenize_prompts(prompts)[0]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    planned = {}
    for i, ids in enumerate(prompt_ids):
        rounds = []
        for k in range(2):
            call = json.dumps({"name": "compute", "arguments": {"request": f"{1000 + i} times {2000 + i + k}"}})
            ask = [*tokenizer.encode(f"<tool_call>\n{call}\n</tool_call>", add_special_tokens=False), eos]
            rounds.append(words(i, segment_tokens - len(ask)) + ask)
        end = tokenizer.encode(f"\\boxed{{{(1000 + i) * (2000 + i)}}}", add_special_tokens=False)
        rounds.append(words(i + 7, segment_tokens - len(end)) + end)
        planned[tuple(ids)] = rounds
    forcer = planned_script(tokenizer, planned)
    trainer._sync_tool_dicts = [{"compute": compute} for _ in prompts]  # as `_generate_and_score_completions` does
    trainer._async_tool_dicts = [{} for _ in prompts]

    def generate(*args: Any, **kwargs: Any) -> Any:  # forced when TRL's loop calls it, not when the coder does
        if kwargs.get("generation_config") is trainer.generation_config:
            kwargs["logits_processor"] = LogitsProcessorList([forcer])
        return type(model).generate(model, *args, **kwargs)

    model.generate = generate
    try:
        sync()
        start = time.perf_counter()
        output = trainer._generate(prompts)
        sync()
        seconds = time.perf_counter() - start
    finally:
        del model.generate
    completion_ids, tool_mask = output[1], output[2]  # TRL 1.16's order
    planner_tokens = sum(sum(mask) for mask in tool_mask)
    assert len(completion_ids) == count
    return seconds, planner_tokens, len(calls)
