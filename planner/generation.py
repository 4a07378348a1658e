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

from delegate.coder.attention import packed_attention
from delegate.coder.hf import cache_argument, eos_ids, last_logits, padded, returned_cache
from delegate.planner.sync import RankSync

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


class StopStrings:
    """transformers' `StopStringCriteria` for a set of stop strings, built once per set (it preprocesses the whole
    vocabulary): shared by the generation backends."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._built: dict[tuple[str, ...], StopStringCriteria] = {}

    def __call__(self, stop_strings: list[str]) -> StopStringCriteria | None:
        key = tuple(stop_strings)
        if key and key not in self._built:
            self._built[key] = StopStringCriteria(self.tokenizer, list(key))
        return self._built.get(key)


def start_call(processors: list[Any]) -> None:
    """Tell stateful logits processors that a new generation call starts (those with a `start_call` method:
    `BanText`), so that none mistakes a call's first step for the next step of the last one."""
    for processor in processors:
        hook = getattr(processor, "start_call", None)
        if callable(hook):
            hook()


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

    `reuse_cache` (dynamic cache, one process; `planner.reuse_cache`, on by default in recipes): each
    micro-batch's KV cache is kept after its `generate` call, and a next call whose sequences extend that
    micro-batch's rows (the engine's next round: the same rows plus the inserted result) continues from it, feeding
    only the tokens the cache lacks instead of re-running the whole prefix. Positions a row did not keep (tokens
    generated after its stop, padding) stay in the cache, masked out; position ids follow the attention mask.
    `release()` drops the caches. Equal to re-running the prefix (tested on the tiny and the real models), and a toy
    GRPO run learns the same with it (bench/NOTES.md). It matters most for `repl`, which pauses at every newline.
    """

    def __init__(self, model: Any, tokenizer: Any, temperature: float = 1.0, top_p: float = 1.0,
                 batch_size: int = 64, cache_implementation: str | None = None,
                 logits_processors: list[LogitsProcessor] | None = None, sync: RankSync | None = None,
                 reuse_cache: bool = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_p = top_p
        self.batch_size = batch_size
        self.cache_implementation = cache_implementation
        self.logits_processors = list(logits_processors or [])
        self.sync = sync
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = sorted(eos_ids(model, tokenizer))
        self._criteria = StopStrings(tokenizer)
        self.reuse_cache = reuse_cache and cache_implementation in (None, "dynamic") and sync is None
        self._kept: list[_Kept] = []  # the last call's micro-batches, for the next round
        self.reused_tokens = 0  # prefix tokens not re-run thanks to the kept caches (for benchmarks)

    def release(self) -> None:
        self._kept = []

    def generate(self, prompts: list[list[int]], budgets: list[int], stop_strings: list[str]) -> list[Generated]:
        results: list[Generated | None] = [None] * len(prompts)
        kept, self._kept = self._kept, []
        fresh = list(range(len(prompts)))
        if self.reuse_cache and kept:
            groups, fresh = _continuations(kept, prompts)
            for old, pairs in groups:
                chunk = [i for i, _ in pairs]
                outputs = self._generate([prompts[i] for i in chunk], [budgets[i] for i in chunk], stop_strings,
                                         resume=(old, [r for _, r in pairs]))
                for index, generated in zip(chunk, outputs, strict=True):
                    results[index] = generated
        order = sorted(fresh, key=lambda i: len(prompts[i]))
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

    def _generate(self, prompts: list[list[int]], budgets: list[int], stop_strings: list[str],
                  padding: bool = False, resume: tuple[_Kept, list[int]] | None = None) -> list[Generated]:
        """`padding`: a call made only to keep step with other ranks (the caller's logits processors skip it).
        Synced (ZeRO-3 fetching shards in each forward pass), `no_grad` rather than `inference_mode`: parameters
        gathered under inference mode cannot take part in the training step's backward pass afterwards."""
        with torch.no_grad() if self.sync is not None else torch.inference_mode():
            return self._generate_unguarded(prompts, budgets, stop_strings, padding, resume)

    def _inputs(self, prompts: list[list[int]], resume: tuple[_Kept, list[int]] | None
                ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Padded input ids, attention mask, and the cache to continue from (None for a fresh micro-batch)."""
        device = self.model.device
        if resume is None:
            ids, mask = padded(prompts, 0, self.pad_id, device)
            return ids, mask, None
        old, rows = resume
        index = torch.tensor(rows, device=device)
        cache = old.cache
        cache.batch_select_indices(index)
        # A row's known tokens are a prefix of its prompt (`_continuations` checked); feed at least one token.
        covered = [min(len(old.known[r]), len(p) - 1) for r, p in zip(rows, prompts, strict=True)]
        mask = old.mask[index]
        # A row keeps its first `covered` known positions (a prompt equal to its row: the last token is fed again).
        seen = mask.cumsum(1)
        mask = mask * (seen <= torch.tensor(covered, device=device)[:, None])
        tails = [p[c:] for p, c in zip(prompts, covered, strict=True)]
        tail_ids, tail_mask = padded(tails, 0, self.pad_id, device)
        self.reused_tokens += sum(covered)
        return torch.cat([old.ids[index], tail_ids], dim=1), torch.cat([mask, tail_mask], dim=1), cache

    def _generate_unguarded(self, prompts: list[list[int]], budgets: list[int], stop_strings: list[str],
                            padding: bool, resume: tuple[_Kept, list[int]] | None = None) -> list[Generated]:
        input_ids, attention, cache = self._inputs(prompts, resume)
        width = input_ids.shape[1]
        recorder = _LogprobRecorder(self.temperature)
        stops = _RowStops(self._criteria(stop_strings), self.eos_ids, budgets, width)
        sampling = self.temperature > 0
        config = GenerationConfig(
            max_new_tokens=max(budgets), do_sample=sampling, temperature=self.temperature if sampling else 1.0,
            top_p=self.top_p if sampling else 1.0, top_k=0 if sampling else None, repetition_penalty=1.0,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids, cache_implementation=self.cache_implementation, use_cache=True)
        processors = [*([] if padding else self.logits_processors), recorder]
        start_call(processors)
        keep = self.reuse_cache and not padding
        config.return_dict_in_generate = keep
        resumed = cache_argument(self.model, cache) if cache is not None else {}
        with packed_attention(self.model):
            output = self.model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                                         logits_processor=LogitsProcessorList(processors),
                                         stopping_criteria=StoppingCriteriaList([stops]),
                                         synced_gpus=self.sync is not None, **resumed, **last_logits(self.model))
        sequences = output.sequences if keep else output
        logprobs = recorder.finish(sequences[:, -1]).T.cpu().tolist()  # (batch, steps)
        new_tokens = sequences[:, width:].cpu().tolist()
        out = []
        for row in range(len(prompts)):
            length = stops.length[row] if stops.length[row] is not None else len(new_tokens[row])
            length = min(length, budgets[row])
            out.append(Generated(new_tokens[row][:length], logprobs[row][:length], stops.reason[row]))
        if keep and (kept := returned_cache(output)) is not None:
            self._kept.append(_Kept.after(kept, sequences, attention, prompts, out, width))
        return out


@dataclass
class _Kept:
    """One micro-batch's KV cache after `generate`, with what it holds: the padded ids and attention mask of the
    cached positions, and each row's known tokens (prompt + what it kept). A row's known tokens sit, in order, at
    the positions where its mask is 1 (a resumed row's positions have holes)."""

    cache: Any
    ids: torch.Tensor
    mask: torch.Tensor
    known: list[list[int]]

    @classmethod
    def after(cls, cache: Any, sequences: torch.Tensor, attention: torch.Tensor, prompts: list[list[int]],
              outputs: list[Generated], width: int) -> _Kept:
        length = cache.get_seq_length()  # every position fed forward (the last sampled token never was)
        steps = sequences.shape[1] - width
        mask = torch.cat([attention, torch.ones(len(prompts), steps, dtype=attention.dtype,
                                                device=attention.device)], dim=1)[:, :length].clone()
        kept = [out.token_ids[: max(0, length - width)] for out in outputs]
        # Positions generated after a row stopped: never part of its sequence.
        lengths = torch.tensor([len(k) for k in kept], device=mask.device)
        mask[:, width:] *= torch.arange(mask.shape[1] - width, device=mask.device)[None, :] < lengths[:, None]
        known = [list(p) + k for p, k in zip(prompts, kept, strict=True)]
        return cls(cache, sequences[:, :length], mask, known)


def _continuations(kept: list[_Kept], prompts: list[list[int]]
                   ) -> tuple[list[tuple[_Kept, list[tuple[int, int]]]], list[int]]:
    """Prompts that extend a kept row (the row's known tokens are a prefix of the prompt), grouped by micro-batch
    as (kept, [(prompt index, row)]); and the prompt indices that extend none. Several prompts may extend one row
    (rows that wrote the same tokens, as greedy duplicates do): each gets its own copy of the row's cache, so they
    continue in the same call rather than re-running their prefix in another."""
    def key(tokens: list[int], n: int) -> tuple[int, ...]:  # cheap: a row's length and its last tokens
        return (n, *tokens[max(0, n - 8):n])

    owners: dict[tuple[int, ...], list[tuple[int, int]]] = {}  # rows of one length and tail: several prompts
    for g, k in enumerate(kept):  # can end with the same tokens (a forced call, a common closing phrase)
        for r, known in enumerate(k.known):
            owners.setdefault(key(known, len(known)), []).append((g, r))
    lengths = sorted({n for n, *_ in owners}, reverse=True)
    groups: dict[int, list[tuple[int, int]]] = {}
    fresh = []
    for i, p in enumerate(prompts):
        hit = None
        for n in (n for n in lengths if n <= len(p)):  # the longest kept row, confirmed in full
            hit = next((o for o in owners.get(key(p, n), ()) if kept[o[0]].known[o[1]] == p[:n]), None)
            if hit is not None:
                break
        if hit is None:
            fresh.append(i)
            continue
        groups.setdefault(hit[0], []).append((i, hit[1]))
    return [(kept[g], pairs) for g, pairs in groups.items()], fresh
