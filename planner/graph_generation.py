"""The planner's decoding through the coder's CUDA-graph decoder (`coder.graph_decode`): `planner.cuda_graph`.

`generate` launches each decoding step's kernels from Python, so on a GPU the host's speed sets the planner's pace
(bench/results/gpu-step-profile.txt). Here the one-token step is captured once per shape and replayed. What
`TransformersGeneration` adds around `generate` is done by `_PlannerPicker` outside the graph, on the GPU, without a
host sync per step: the logits processors (a forcer in tests, the no-tools ban), the log-probability of each chosen
token under the sampling temperature (after the processors, before top-p, as `TransformersGeneration` records it
and TRL recomputes it), EOS, stop strings (transformers' `StopStringCriteria` on the tokens so far) and each row's
own budget. Greedy picks the argmax; sampling goes through transformers' temperature and top-p warpers.

Tool rounds continue from the kept KV cache (`reuse_cache`, on by default): the engine hands each round the rows'
whole token sequences, and a sequence that extends a row of the last call's cache (its tokens so far, a result
appended) resumes from it. What a row's cache lacks is its last sampled token (chosen, never fed) and what the
environment inserted after it (nothing, for a row that paused at a stop string without a call). A resumed
micro-batch keeps the layout a fresh one would have, left-padded sequences, and prefills only its last columns,
as many as the longest such tail; the columns before are gathered from the kept cache
(`coder.graph_decode.Resume`). A row with a shorter tail recomputes its last cached tokens in that same pass,
which costs nothing more (the pass is as wide for every row) and keeps the fresh call's shapes and graphs.
Sequences that extend no kept row join a resumed micro-batch with room, or are prefilled whole; rows whose cache a
later micro-batch of the same shape overwrote are prefilled whole too. Either way the tokens are the same.
`release()` (the engine's, at the end of a run) forgets the caches: after an optimizer step they are stale.

A shape's captured step and static cache are kept across rounds and training steps, its rows rounded up and its
cache length only ever growing, so that the rounds of a run replay one or two graphs. The model may be a PEFT
model: LoRA weights are updated in place by the optimizer, and a replay reads them where they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, StopStringCriteria

from delegate.coder.attention import packed_attention
from delegate.coder.graph_decode import CacheHandle, GraphDecoder, Resume, check_model, greedy_or_sampled
from delegate.coder.hf import eos_ids, padded
from delegate.planner.generation import Generated, StopReason, StopStrings, _continuations, start_call

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


@dataclass
class _Kept:
    """One micro-batch's cache after a call: row i of it holds `known[i]`, the tokens of the call's i-th row that
    were fed forward (its prompt and its kept tokens but the last, which the next round prefills)."""

    handle: CacheHandle
    known: list[list[int]]


class GraphGeneration:
    """`TransformersGeneration`'s contract (a generation backend for the engine) on `GraphDecoder`: micro-batches
    sorted by length, each decoded with the one-token step replayed from a CUDA graph on a GPU (eager on a CPU,
    where it serves the tests). One process at a time: ranks that must step together (ZeRO-3 without gathered
    weights, FSDP) use `generate`. `reuse_cache`: continue tool rounds from the kept caches (module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, temperature: float = 1.0, top_p: float = 1.0,
                 batch_size: int = 64, logits_processors: list[LogitsProcessor] | None = None,
                 graph: bool | None = None, reuse_cache: bool = True) -> None:
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
        self.reuse_cache = reuse_cache
        self._kept: list[_Kept] = []  # the last call's micro-batches, for the next round
        self.prefilled: list[int] = []  # the last call's tokens prefilled, per sequence (for tests and benchmarks)
        self.reused_tokens = 0  # tokens served from kept caches instead of prefilled again, over all calls

    def release(self) -> None:
        """Forget the kept caches (the graphs and their buffers stay, on purpose)."""
        self._kept = []

    def generate(self, prompts: list[list[int]], budgets: list[int], stop_strings: list[str]) -> list[Generated]:
        results: list[Generated | None] = [None] * len(prompts)
        self.prefilled = [0] * len(prompts)
        kept = [k for k in self._kept if self.decoder.holds(k.handle)]
        self._kept = []
        groups, fresh = _continuations(kept, prompts) if self.reuse_cache and kept else ([], list(range(len(prompts))))
        batches: list[tuple[_Kept, list[tuple[int, int | None]]]] = []
        for old, pairs in groups:
            fresh += [i for i, _ in pairs[self.batch_size:]]
            batches.append((old, list(pairs[:self.batch_size])))
        # Sequences to prefill whole join a resumed micro-batch while it has room: a call of their own in the same
        # shape would overwrite the cache that the resumed rows continue from.
        fresh.sort(key=lambda i: len(prompts[i]))
        for _, pairs in batches:
            room = self.batch_size - len(pairs)
            pairs += [(i, None) for i in fresh[:room]]
            fresh = fresh[room:]
        for old, pairs in batches:
            if old.handle.intact:
                self._resume(old, pairs, prompts, budgets, stop_strings, results)
            else:  # an earlier micro-batch of this call wrote into its shape: prefill these whole
                fresh += [i for i, _ in pairs]
        order = sorted(fresh, key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            ids, mask = padded([prompts[i] for i in chunk], 0, self.pad_id, self.model.device)
            self._decode(chunk, prompts, budgets, stop_strings, results, ids, mask)
        return [r for r in results if r is not None]

    def _resume(self, old: _Kept, pairs: list[tuple[int, int | None]], prompts: list[list[int]],
                budgets: list[int], stop_strings: list[str], results: list[Generated | None]) -> None:
        """Continue sequences that extend rows of `old`'s cache: (sequence index, row) pairs, row None for a
        sequence prefilled whole. The last columns, as many as the longest run of tokens a row's cache lacks, are
        prefilled; the columns before them come from the cache."""
        chunk = [i for i, _ in pairs]
        # A row's cached tokens are a prefix of its sequence (`_continuations` checked); at least one is fed.
        covered = [0 if r is None else min(len(old.known[r]), len(prompts[i]) - 1) for i, r in pairs]
        tail = max(len(prompts[i]) - c for i, c in zip(chunk, covered, strict=True))
        ids, mask = padded([prompts[i] for i in chunk], 0, self.pad_id, self.model.device)
        self.reused_tokens += sum(max(0, len(prompts[i]) - tail) for i in chunk)
        self._decode(chunk, prompts, budgets, stop_strings, results, ids, mask, shared=ids.shape[1] - tail,
                     resume=Resume(old.handle, [0 if r is None else r for _, r in pairs]))

    def _decode(self, chunk: list[int], prompts: list[list[int]], budgets: list[int], stop_strings: list[str],
                results: list[Generated | None], ids: torch.Tensor, mask: torch.Tensor, shared: int = 0,
                resume: Resume | None = None) -> None:
        """Decode one micro-batch (its left-padded sequences; with `resume`, the first `shared` columns come from
        a kept cache) and keep its cache for the next round."""
        chunk_budgets = [budgets[i] for i in chunk]
        self.cache_length = max(self.cache_length, ids.shape[1] + max(chunk_budgets))
        start_call(self.logits_processors)
        picker = _PlannerPicker(self.logits_processors, self.temperature, self.top_p, self._criteria(stop_strings),
                                self.eos_ids, chunk_budgets)
        with packed_attention(self.model):
            tokens = self.decoder(ids, mask, None, shared, max(chunk_budgets), picker=picker,
                                  cache_length=self.cache_length, resume=resume)
        fed = tokens.shape[1] - 1  # steps run: each row's first chosen tokens up to this many are in the cache
        known = []
        for index, generated, prefilled in zip(chunk, picker.results(tokens), self.decoder.prefilled, strict=True):
            results[index] = generated
            self.prefilled[index] = prefilled
            known.append(prompts[index] + generated.token_ids[:min(fed, len(generated.token_ids) - 1)])
        if self.reuse_cache and self.decoder.last is not None:
            self._kept.append(_Kept(self.decoder.last, known))
