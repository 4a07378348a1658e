"""Generation backends: token ids in, sampled token ids (with log-probabilities and why they stopped) out.

The engine owns no model: it is handed a backend. `TransformersGeneration` runs left-padded batched `generate`
with per-row token budgets and stop strings; it records, for each row, where it stopped and the log-probability
of each sampled token under the sampling distribution's temperature (log-softmax of logits / T, as TRL computes
its own). `planner.vllm_generation` has the vLLM counterpart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

from planner.sync import RankSync

StopReason = Literal["eos", "stop", "length"]


@dataclass
class Generated:
    token_ids: list[int]
    logprobs: list[float]
    stop: StopReason  # EOS sampled, a stop string reached, or the row's token budget spent


class GenerationBackend(Protocol):
    def generate(self, prompts: list[list[int]], budgets: list[int], stop_strings: list[str]) -> list[Generated]:
        """Continue each token sequence by at most its budget of tokens, pausing after any stop string."""
        ...


class _LogprobRecorder(LogitsProcessor):
    """Keeps the log-probability of each sampled token. Custom processors run before the sampling warpers, so
    it sees the logits before temperature and applies the temperature itself; top-p/top-k are left out, as in
    TRL's own recomputation. The token sampled at step t is known at step t+1 (the last input id)."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature if temperature > 0 else 1.0
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """(steps, batch) log-probabilities, given the tokens sampled at the last step."""
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, last_tokens[:, None]).squeeze(1))
            self.previous = None
        return torch.stack(self.steps) if self.steps else torch.empty(0, 0)


class _RowStops(StoppingCriteria):
    """Stops each row at EOS, at a stop string, or at its own budget, and remembers where and why."""

    def __init__(self, stop_strings: StopStringCriteria | None, eos_ids: list[int], budgets: list[int],
                 prompt_length: int) -> None:
        self.stop_strings = stop_strings
        self.budgets = budgets
        self.prompt_length = prompt_length
        self.eos = torch.tensor(eos_ids)
        self.length: list[int | None] = [None] * len(budgets)
        self.reason: list[StopReason] = ["length"] * len(budgets)
        self.budget_tensor: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_length
        if self.budget_tensor is None:
            self.budget_tensor = torch.tensor(self.budgets, device=input_ids.device)
            self.eos = self.eos.to(input_ids.device)
        is_eos = torch.isin(input_ids[:, -1], self.eos)
        is_stop = (self.stop_strings(input_ids, scores) if self.stop_strings is not None
                   else torch.zeros_like(is_eos))
        is_spent = self.budget_tensor <= generated
        done = is_eos | is_stop | is_spent
        for row in done.nonzero().flatten().tolist():
            if self.length[row] is None:
                self.length[row] = generated
                self.reason[row] = "eos" if is_eos[row] else "stop" if is_stop[row] else "length"
        return done


class TransformersGeneration:
    """Batched generation with a local transformers model (CPU or GPU), in micro-batches sorted by length.

    `logits_processors` run before the log-probability recorder (tests use one to force a scripted text).
    `cache_implementation="static"` pre-allocates the KV cache, which is faster on the GPU.
    `sync` (several processes whose forward passes are collectives, as under ZeRO-3 without gathering the weights
    for generation): every rank makes the same number of `generate` calls (a rank with fewer micro-batches, or
    none, pads with a one-token prompt) and each call runs with `synced_gpus`, so ranks step together.
    """

    def __init__(self, model: Any, tokenizer: Any, temperature: float = 1.0, top_p: float = 1.0,
                 batch_size: int = 64, cache_implementation: str | None = None,
                 logits_processors: list[LogitsProcessor] | None = None, sync: RankSync | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_p = top_p
        self.batch_size = batch_size
        self.cache_implementation = cache_implementation
        self.logits_processors = list(logits_processors or [])
        self.sync = sync
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = sorted(_eos_ids(model, tokenizer))
        self._stop_criteria: dict[tuple[str, ...], StopStringCriteria] = {}

    def generate(self, prompts: list[list[int]], budgets: list[int], stop_strings: list[str]) -> list[Generated]:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generated | None] = [None] * len(prompts)
        chunks = [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        # Agreed before any generation: every call below is a collective when synced.
        calls = self.sync.max(len(chunks)) if self.sync is not None else len(chunks)
        for chunk in chunks:
            for index, generated in zip(chunk, self._generate([prompts[i] for i in chunk],
                                                               [budgets[i] for i in chunk], stop_strings),
                                        strict=True):
                results[index] = generated
        for _ in range(calls - len(chunks)):  # keep step with ranks that have more micro-batches
            self._generate([[self.pad_id]], [1], stop_strings, padding=True)
        return [r for r in results if r is not None]

    def _criteria(self, stop_strings: list[str]) -> StopStringCriteria | None:
        key = tuple(stop_strings)
        if key and key not in self._stop_criteria:
            self._stop_criteria[key] = StopStringCriteria(self.tokenizer, list(key))
        return self._stop_criteria.get(key)

    def _generate(self, prompts: list[list[int]], budgets: list[int], stop_strings: list[str],
                  padding: bool = False) -> list[Generated]:
        """`padding`: a call made only to keep step with other ranks (the caller's logits processors skip it).
        Synced (ZeRO-3 fetching shards in each forward pass), `no_grad` rather than `inference_mode`: parameters
        gathered under inference mode cannot take part in the training step's backward pass afterwards."""
        with torch.no_grad() if self.sync is not None else torch.inference_mode():
            return self._generate_unguarded(prompts, budgets, stop_strings, padding)

    def _generate_unguarded(self, prompts: list[list[int]], budgets: list[int], stop_strings: list[str],
                            padding: bool) -> list[Generated]:
        device = self.model.device
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        recorder = _LogprobRecorder(self.temperature)
        stops = _RowStops(self._criteria(stop_strings), self.eos_ids, budgets, width)
        sampling = self.temperature > 0
        config = GenerationConfig(
            max_new_tokens=max(budgets), do_sample=sampling, temperature=self.temperature if sampling else 1.0,
            top_p=self.top_p if sampling else 1.0, top_k=0 if sampling else None, repetition_penalty=1.0,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids, cache_implementation=self.cache_implementation, use_cache=True)
        processors = [*([] if padding else self.logits_processors), recorder]
        sequences = self.model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                                        logits_processor=LogitsProcessorList(processors),
                                        stopping_criteria=StoppingCriteriaList([stops]),
                                        synced_gpus=self.sync is not None)
        logprobs = recorder.finish(sequences[:, -1]).T.cpu().tolist()  # (batch, steps)
        new_tokens = sequences[:, width:].cpu().tolist()
        out = []
        for row in range(len(prompts)):
            length = stops.length[row] if stops.length[row] is not None else len(new_tokens[row])
            length = min(length, budgets[row])
            out.append(Generated(new_tokens[row][:length], logprobs[row][:length], stops.reason[row]))
        return out


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return ids
