"""vLLM generation for the rollout engine: a local `vllm.LLM`, or TRL's vLLM client during training.

Not run on our machines (vLLM is too large for them); written against vLLM's documented API: `LLM.generate`
with `TokensPrompt(prompt_token_ids=...)` and one `SamplingParams` per prompt (its own `max_tokens`), `stop`
strings kept in the output (`include_stop_str_in_output`), and `logprobs=0` for the sampled token's
log-probability. A completion's `finish_reason` is "length" or "stop"; `stop_reason` is None for EOS, the
matched string for a stop string. With the tool disabled, `ban_text` (the call marker) is banned in every
tokenization by `planner.vllm_ban.BanTextLogitsProcessor`, which the `LLM` must have been built with.
"""

from __future__ import annotations

from typing import Any

from delegate.coder.vllm_backend import import_vllm
from delegate.planner.ban import BAN_ARG, PROMPT_TAIL_ARG, BanText
from delegate.planner.generation import Generated


class VLLMGeneration:
    def __init__(self, llm: Any, temperature: float = 1.0, top_p: float = 1.0,
                 ban_text: str | None = None) -> None:
        self.vllm = import_vllm("the 'vllm' planner backend")
        self.llm = llm
        self.temperature = temperature
        self.top_p = top_p
        self.ban_text = ban_text or None  # text the planner may not write, however tokenized

    def generate(self, prompts: list[list[int]], budgets: list[int], stop_strings: list[str]) -> list[Generated]:
        if not prompts:  # a rank keeping step with others that still generate (colocated engines: no collective)
            return []
        from vllm.inputs import TokensPrompt

        params = [self.vllm.SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=budget,
                                           stop=stop_strings, include_stop_str_in_output=True, logprobs=0,
                                           extra_args=self.ban_args(prompt))
                  for prompt, budget in zip(prompts, budgets, strict=True)]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            tokens = list(completion.token_ids)
            logprobs = [step[token].logprob for step, token in zip(completion.logprobs or [], tokens, strict=False)]
            if completion.finish_reason == "length":
                stop = "length"
            else:
                stop = "stop" if isinstance(completion.stop_reason, str) else "eos"
            results.append(Generated(tokens, logprobs, stop))
        return results

    def ban_args(self, prompt: list[int]) -> dict[str, Any] | None:
        """`SamplingParams.extra_args` that switch the ban on for one request (None: no ban)."""
        if self.ban_text is None:
            return None
        return {BAN_ARG: self.ban_text, PROMPT_TAIL_ARG: prompt[-BanText.window_for(self.ban_text):]}
