"""The planner's decoding through the coder's CUDA-graph decoder (`coder.graph_decode`): `planner.cuda_graph`.

`generate` launches each decoding step's kernels from Python, so on a GPU the host's speed sets the planner's pace
(bench/results/gpu-step-profile.txt). Here the one-token step is captured once per shape and replayed. What
`TransformersGeneration` adds around `generate` is done by `_PlannerPicker` outside the graph, on the GPU, without a
host sync per step: the logits processors (a forcer in tests, the no-tools ban), the log-probability of each chosen
token under the sampling temperature (after the processors, before top-p, as `TransformersGeneration` records it
and TRL recomputes it), EOS, stop strings (transformers' `StopStringCriteria` on the tokens so far) and each row's
own budget. Greedy picks the argmax; sampling goes through transformers' temperature and top-p warpers.

Each engine round runs its prefill again (the kept caches of `reuse_cache` belong to the `generate` path); a
shape's captured step and static cache are kept across rounds and training steps, its rows rounded up and its
cache length only ever growing, so that the rounds of a run replay one or two graphs. The model may be a PEFT
model: LoRA weights are updated in place by the optimizer, and a replay reads them where they are.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor, StopStringCriteria

from delegate.coder.attention import packed_attention
from delegate.coder.graph_decode import GraphDecoder, check_model, greedy_or_sampled
from delegate.coder.hf import eos_ids, padded
from delegate.planner.generation import Generated, StopReason, StopStrings, start_call

_REASONS: tuple[StopReason, ...] = ("length", "eos", "stop")
PLANNER_GRAPHS_KEPT = 3  # shapes kept: a run's rounds shrink the live rows (rounded up to 32) as rollouts end


class _PlannerPicker:
    """One micro-batch's choices: processors, log-probabilities, and where and why each row stopped."""

    def __init__(self, processors: list[LogitsProcessor], temperature: float, top_p: float,
                 stops: StopStringCriteria | None, eos: list[int], budgets: list[int]) -> None:
        self.processors = processors
        self.temperature = temperature if temperature > 0 else 1.0
        self.sample = greedy_or_sampled(temperature, top_p)
        self.stops = stops
        self.eos_ids = eos
        self.budget_list = budgets
        self.real = len(budgets)
        self.steps: list[torch.Tensor] = []
        self.length: torch.Tensor | None = None  # per row: tokens up to where it stopped (-1 until then)
        self.reason: torch.Tensor | None = None  # per row: an index into _REASONS

    def start(self, rows: int, real: int) -> None:
        self.real = real
        self.steps = []
        self.length = self.reason = None

    def choose(self, seen: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        scores = logits.float()
        if self.processors:  # the caller's rows only: the rounding's copies are no prompt of theirs
            head = scores[: self.real]
            for processor in self.processors:
                head = processor(seen[: self.real], head)
            scores = torch.cat([head, scores[self.real:]]) if self.real < scores.shape[0] else head
        chosen = self.sample(scores)
        logprobs = torch.log_softmax(scores / self.temperature, dim=-1)
        self.steps.append(logprobs.gather(1, chosen[:, None]).squeeze(1))
        return chosen

    def finished(self, seen: torch.Tensor, chosen: torch.Tensor, step: int) -> torch.Tensor:
        if self.length is None:
            rows, device = chosen.shape[0], chosen.device
            self.budgets = torch.tensor(self.budget_list + [self.budget_list[-1]] * (rows - self.real), device=device)
            self.eos = torch.tensor(self.eos_ids, device=device)
            self.length = torch.full((rows,), -1, dtype=torch.long, device=device)
            self.reason = torch.zeros(rows, dtype=torch.long, device=device)
        assert self.reason is not None
        is_eos = torch.isin(chosen, self.eos)
        is_stop = self.stops(seen, None) if self.stops is not None else torch.zeros_like(is_eos)
        done = is_eos | is_stop | (self.budgets <= step + 1)
        new = done & (self.length < 0)
        self.length = torch.where(new, step + 1, self.length)
        why = torch.where(is_eos, 1, torch.where(is_stop, 2, 0))
        self.reason = torch.where(new, why, self.reason)
        return done

    def results(self, tokens: torch.Tensor) -> list[Generated]:
        """Each caller's row: its tokens up to where it stopped, their log-probabilities, and why."""
        assert self.length is not None and self.reason is not None
        steps = tokens.shape[1]
        logprobs = torch.stack(self.steps, dim=1)[: self.real].cpu().tolist()
        lengths = self.length[: self.real].cpu().tolist()
        reasons = self.reason[: self.real].cpu().tolist()
        rows = tokens.cpu().tolist()
        out = []
        for row, budget in enumerate(self.budget_list):
            length = min(steps if lengths[row] < 0 else lengths[row], budget)
            out.append(Generated(rows[row][:length], logprobs[row][:length], _REASONS[reasons[row]]))
        return out


class GraphGeneration:
    """`TransformersGeneration`'s contract (a generation backend for the engine) on `GraphDecoder`: micro-batches
    sorted by length, each decoded with the one-token step replayed from a CUDA graph on a GPU (eager on a CPU,
    where it serves the tests). One process at a time: ranks that must step together (ZeRO-3 without gathered
    weights, FSDP) use `generate`."""

    def __init__(self, model: Any, tokenizer: Any, temperature: float = 1.0, top_p: float = 1.0,
                 batch_size: int = 64, logits_processors: list[LogitsProcessor] | None = None,
                 graph: bool | None = None) -> None:
        check_model(model, "planner.cuda_graph")
        self.model = model
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_p = top_p
        self.batch_size = batch_size
        self.logits_processors = list(logits_processors or [])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = sorted(eos_ids(model, tokenizer))
        self.decoder = GraphDecoder(model, self.eos_ids, self.pad_id, graph, kept=PLANNER_GRAPHS_KEPT)
        self._criteria = StopStrings(tokenizer)
        self.cache_length = 0  # the longest cache a call needed so far: later, shorter calls keep its shape

    def release(self) -> None:
        """Nothing to drop between runs: the graphs and their caches are kept on purpose."""

    def generate(self, prompts: list[list[int]], budgets: list[int], stop_strings: list[str]) -> list[Generated]:
        results: list[Generated | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            chunk_budgets = [budgets[i] for i in chunk]
            ids, mask = padded([prompts[i] for i in chunk], 0, self.pad_id, self.model.device)
            self.cache_length = max(self.cache_length, ids.shape[1] + max(chunk_budgets))
            start_call(self.logits_processors)
            picker = _PlannerPicker(self.logits_processors, self.temperature, self.top_p,
                                    self._criteria(stop_strings), self.eos_ids, chunk_budgets)
            with packed_attention(self.model):
                tokens = self.decoder(ids, mask, None, 0, max(chunk_budgets), picker=picker,
                                      cache_length=self.cache_length)
            for index, generated in zip(chunk, picker.results(tokens), strict=True):
                results[index] = generated
        return [r for r in results if r is not None]
