"""Planner generation on TRL's vLLM server (`use_vllm: true`, `vllm_mode: server`), the way TRL itself does it.

Every rank's prompts are gathered, the main process sends them to the server (TRL's `VLLMClient.generate`, token
ids in, token ids and log-probabilities out, our stop strings passed through to vLLM's sampling parameters), and
the answer is broadcast, each rank taking its own slice. Each call is a collective, so every rank must make the
same calls: the engine's `RankSync` sees to it (a rank with nothing left sends no prompts but still takes part).
TRL pushes the current weights to the server before it calls the rollout function.

Not run on our machines (vLLM is too large for them); written to TRL 1.16's `VLLMClient` and vLLM's documented
`/v1/completions` sampling parameters (`stop`, `include_stop_str_in_output`, `skip_special_tokens`, `bad_words`).
"""

from __future__ import annotations

from typing import Any

from delegate.planner.generation import Generated


def finish_reason(tokens: list[int], budget: int, eos_ids: set[int]) -> str:
    """The server's completions carry no stop reason: EOS last is "eos", a full budget "length", else "stop"."""
    if tokens and tokens[-1] in eos_ids:
        return "eos"
    return "length" if len(tokens) >= budget else "stop"


class ServerGeneration:
    def __init__(self, client: Any, accelerator: Any, eos_ids: set[int], temperature: float = 1.0,
                 top_p: float = 1.0, bad_words: list[str] | None = None) -> None:
        self.client = client
        self.accelerator = accelerator
        self.eos_ids = eos_ids
        self.temperature = temperature
        self.top_p = top_p
        self.bad_words = bad_words

    def generate(self, prompts: list[list[int]], budgets: list[int], stop_strings: list[str]) -> list[Generated]:
        from accelerate.utils import broadcast_object_list, gather_object

        everything = gather_object([(list(p), b) for p, b in zip(prompts, budgets, strict=True)])
        counts = gather_object([len(prompts)])
        payload: list[Any] = [None]
        if self.accelerator.is_main_process:
            payload = [self._ask(everything, stop_strings)]
        broadcast_object_list(payload, from_process=0)
        start = sum(counts[: self.accelerator.process_index])
        mine = payload[0][start: start + len(prompts)]
        return [Generated(tokens, logprobs, finish_reason(tokens, budget, self.eos_ids))  # type: ignore[arg-type]
                for (tokens, logprobs), budget in zip(mine, budgets, strict=True)]

    def _ask(self, everything: list[tuple[list[int], int]], stop_strings: list[str]) -> list[tuple[list, list]]:
        """One request at the largest budget (`max_tokens` is per request, and after the first round every rollout
        has its own budget), each row then cut to its own: a sample cut at N tokens is a sample of N tokens.
        Answers in the order asked."""
        if not everything:
            return []
        extra = {"stop": stop_strings, "include_stop_str_in_output": True, "skip_special_tokens": False}
        if self.bad_words:
            extra["bad_words"] = self.bad_words
        out = self.client.generate(prompts=[prompt for prompt, _ in everything], n=1, temperature=self.temperature,
                                   top_p=self.top_p, max_tokens=max(budget for _, budget in everything), logprobs=0,
                                   generation_kwargs=extra)
        answers = []
        for k, (_, budget) in enumerate(everything):
            tokens = list(out["completion_ids"][k])[:budget]
            logprobs = [step[0] for step in out["logprobs"][k]][:budget] if out.get("logprobs") else \
                [0.0] * len(tokens)
            answers.append((tokens, logprobs))
        return answers
