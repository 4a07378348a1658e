"""Decoding with a preallocated KV cache whose one-token step is captured once as a CUDA graph and replayed.

`generate` launches each decoding step's kernels from Python, about 1,300 of them for a 7B Qwen2.5; at the coder's
batch of 256 rows that launching, not the GPU, sets the pace (bench/NOTES.md, fifth session). Here the step (the
forward pass of one token per row into a `StaticCache`, under a 4D mask kept in a buffer) is recorded once per shape
and replayed: one launch a step, and the step's kernels are the eager ones (no `torch.compile`: transformers' SDPA
code packs the query heads onto the key/value heads only outside it, and copies the key/value heads otherwise).
`GraphDecoder` keeps the last shapes' graphs, with their cache and buffers, for later calls. Kept because it wins
measured: 2.26x transformers' static cache under `torch.compile(mode="reduce-overhead")` at 7B, 256 rows
(bench/results/gpu-library-paths.txt).
Choosing the next token stays outside the graph, in a `Picker`: the coder's (`EosPicker`: argmax, or temperature
and top-p sampling through transformers' own warpers, until EOS) or the planner's (`planner.graph_generation`:
logits processors, log-probabilities, stop strings and per-row budgets). One decoder serves both. On a CPU the same
loop runs without a graph.

Rows carry `generate`'s left-padding layout: the positions where `mask` is 1 are the row's tokens, position ids
count them, and a padded position also sees itself (so that no query row is empty) and is never seen by a real
token.

A decode's cache can serve the next one (`Resume`, the planner's tool rounds): the new call's rows keep the same
left-padded layout, and the first `shared` columns, instead of being prefilled, are gathered from each row's tokens
in the kept cache (their keys carry their rotary positions, which stay the row's own). A `CacheHandle` names the
decode whose cache that is; any later decode into the same shape makes it stale.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import StaticCache, TemperatureLogitsWarper, TopPLogitsWarper

from delegate.coder.hf import last_logits

CHECK_EVERY = 8  # steps between checks (one host sync) that every row has finished
WARMUP_STEPS = 2  # eager steps on a side stream before the capture, as `torch.cuda.graphs` asks


def check_model(model: Any, field: str = "coder.cuda_graph") -> None:
    """Refuse, at load time, a model this decoder cannot drive (`field`: the setting named in the error)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model takes **kwargs
    attention = base.config._attn_implementation
    if attention not in ("sdpa", "eager"):
        raise ValueError(f"{field} passes 4D attention masks, which the {attention!r} attention does not take; load "
                         "the model with attn_implementation='sdpa'")
    types = getattr(base.config, "layer_types", None)
    windowed = any(t != "full_attention" for t in types) if types else getattr(base.config, "sliding_window", None)
    if windowed:
        raise ValueError(f"{field} masks every cached position itself, which a sliding-window or other non-full "
                         "attention layer does not allow; leave it off for this model")
    if "cache" not in inspect.signature(base.forward).parameters:
        raise ValueError(f"{field} needs a transformers release whose models take `cache=` and whose StaticCache "
                         "counts its own length (5.24 was tested)")


class Picker(Protocol):
    """Chooses each step's tokens outside the graph. `seen`: (rows, tokens so far), the left-padded prompts and what
    was chosen before, as `generate` hands logits processors their `input_ids`."""

    def start(self, rows: int, real: int) -> None:
        """A new decode of `rows` rows, of which the first `real` are the caller's (the rest copy the last one)."""

    def choose(self, seen: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The next token of each row, from its last-position logits."""
        ...

    def finished(self, seen: torch.Tensor, chosen: torch.Tensor, step: int) -> torch.Tensor:
        """Which rows end with `chosen` (`seen` now holds it; `step` counts from 0)."""
        ...


class EosPicker:
    """The coder's: greedy or sampled, until an end-of-reply token."""

    def __init__(self, eos_ids: list[int], temperature: float = 0.0, top_p: float = 1.0) -> None:
        self.eos_ids = eos_ids
        self.sample = greedy_or_sampled(temperature, top_p)
        self.eos: torch.Tensor | None = None

    def start(self, rows: int, real: int) -> None:
        self.eos = None

    def choose(self, seen: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.sample(logits)

    def finished(self, seen: torch.Tensor, chosen: torch.Tensor, step: int) -> torch.Tensor:
        if self.eos is None:
            self.eos = torch.tensor(self.eos_ids, device=chosen.device)
        return torch.isin(chosen, self.eos)


def greedy_or_sampled(temperature: float, top_p: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The next token of each row from its last-position logits."""
    if temperature <= 0:
        return lambda logits: logits.argmax(-1)
    warpers = [TemperatureLogitsWarper(temperature), *([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])]

    def sample(logits: torch.Tensor) -> torch.Tensor:
        scores = logits.float()
        for warp in warpers:
            scores = warp(None, scores)
        return torch.multinomial(scores.softmax(-1), 1).squeeze(1)

    return sample


class _Step:
    """The one-token forward pass, eager for the first calls and then replayed from a captured graph."""

    def __init__(self, forward: Callable[[], torch.Tensor], graph: bool) -> None:
        self.forward = forward
        self.graph = torch.cuda.CUDAGraph() if graph else None
        self.calls = 0
        self.output: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        if self.graph is None:
            return self.forward()
        if self.calls <= WARMUP_STEPS:  # real steps, run on a side stream (cuBLAS and allocator warm-up)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                output = self.forward()
            torch.cuda.current_stream().wait_stream(side)
            return output
        if self.output is None:
            # Records, does not run (the replay below takes this step). Other threads may use the GPU meanwhile,
            # but not sample from it: PyTorch then fails on the generator's offset (bench/NOTES.md).
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.output = self.forward()
        self.graph.replay()
        return self.output


GRAPHS_KEPT = 2  # shapes whose captured step and preallocated cache stay for later calls
ROWS_STEP = 32  # with a graph, rows and cache length round up to these, so that calls of nearby sizes share one
LENGTH_STEP = 64


class _Shape:
    """One shape's buffers, KV cache and step: what a captured graph reads and writes, so kept across calls."""

    def __init__(self, model: Any, rows: int, length: int, graph: bool) -> None:
        device = model.device
        self.cache = StaticCache(config=model.config, max_cache_len=length)
        self.bias = torch.zeros(rows, length, dtype=model.dtype, device=device)  # the step's additive mask
        self.token = torch.empty(rows, 1, dtype=torch.long, device=device)  # the step's input
        self.position = torch.zeros(rows, 1, dtype=torch.long, device=device)  # the next token's position id
        self.where = torch.zeros(1, dtype=torch.long, device=device)  # the next token's cache position
        # After a decode: the cache columns that hold each row's tokens (its prompt, then every token fed by a
        # step, in order), for a later `Resume`; `serial` counts the decodes written into this cache.
        self.valid = torch.zeros(rows, length, dtype=torch.bool, device=device)
        self.serial = 0

        def forward() -> torch.Tensor:
            self.bias.index_fill_(1, self.where, 0.0)
            out = model(input_ids=self.token, attention_mask=self.bias[:, None, None, :], position_ids=self.position,
                        cache=self.cache, use_cache=True).logits[:, -1]
            self.position.add_(1)
            self.where.add_(1)
            return out

        self.step = _Step(forward, graph)


@dataclass(frozen=True)
class CacheHandle:
    """The cache one decode left: valid until another decode writes into the same shape."""

    shape: _Shape
    serial: int

    @property
    def intact(self) -> bool:
        return self.shape.serial == self.serial


@dataclass(frozen=True)
class Resume:
    """A decode that continues rows of a kept cache: in the new call's first `shared` columns, row i holds the
    first tokens of row `rows[i]` of `handle`'s cache (as many as its mask holds there, right-aligned as the mask
    puts them), which are gathered rather than prefilled; only the columns after `shared` are prefilled."""

    handle: CacheHandle
    rows: list[int]


class GraphDecoder:
    """Decodes left-padded micro-batches (see `decode`). On a GPU each shape's step is captured once and replayed;
    the last `GRAPHS_KEPT` shapes stay captured, rows and cache length rounded up (`ROWS_STEP`, `LENGTH_STEP`; the
    extra rows copy the last one and are dropped, the extra length is never seen), so that a later call of a
    nearby size replays without warming up or capturing again. The prompt's width is not rounded: the prefill
    would pay for every padded position."""

    def __init__(self, model: Any, eos_ids: list[int], pad_id: int, graph: bool | None = None,
                 kept: int = GRAPHS_KEPT, round_shapes: bool | None = None) -> None:
        """`graph`: capture and replay the step (default: when the model is on a GPU); `round_shapes`: round rows
        and cache length up (default: with a graph)."""
        self.model = model
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.graph = model.device.type == "cuda" if graph is None else graph
        self.round_shapes = self.graph if round_shapes is None else round_shapes
        self.kept = kept
        self.shapes: OrderedDict[tuple[int, int], _Shape] = OrderedDict()  # (rows, cache length)
        self.built = 0  # shapes built (with a graph, each one captured) so far: for tests and benchmarks
        self.prefilled: list[int] = []  # the last call's tokens fed to its prefill, per caller's row
        self.last: CacheHandle | None = None  # the cache the last call left

    def holds(self, handle: CacheHandle) -> bool:
        """Whether `handle`'s cache is intact and still one of the kept shapes (a dropped one frees its memory)."""
        return handle.intact and any(shape is handle.shape for shape in self.shapes.values())

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, prefix: Any, shared: int, max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0, picker: Picker | None = None,
                 cache_length: int = 0, resume: Resume | None = None) -> torch.Tensor:
        """`picker`: how tokens are chosen and rows end (default: `EosPicker` at `temperature` and `top_p`);
        `cache_length`: at least this long a cache (a caller whose calls vary in width keeps one shape);
        `resume`: the first `shared` columns come from a kept cache (with `prefix` None)."""
        picker = picker or EosPicker(self.eos_ids, temperature, top_p)
        if resume is not None and (prefix is not None or not resume.handle.intact):
            raise ValueError("a resumed decode takes an intact kept cache and no shared prefix")
        try:
            with torch.inference_mode():
                return self._decode(ids, mask, prefix, shared, max_new_tokens, picker, cache_length, resume)
        except BaseException:
            self.shapes.clear()  # a capture cut short (out of memory, say) leaves no graph to replay
            raise

    def _shape(self, rows: int, length: int, reset: bool = True) -> _Shape:
        """`reset`: empty the cache (a resumed call instead overwrites its first columns, and may read them)."""
        key = (rows, length)
        if key in self.shapes:
            self.shapes.move_to_end(key)
            shape = self.shapes[key]
            if reset:
                shape.cache.reset()
            return shape
        while self.shapes and len(self.shapes) >= self.kept:
            self.shapes.popitem(last=False)
        shape = _Shape(self.model, rows, length, self.graph)
        self.built += 1
        if self.kept:
            self.shapes[key] = shape
        return shape

    def _decode(self, ids: torch.Tensor, mask: torch.Tensor, prefix: Any, shared: int, max_new_tokens: int,
                picker: Picker, cache_length: int = 0, resume: Resume | None = None) -> torch.Tensor:
        model, device, real = self.model, ids.device, ids.shape[0]
        sources = list(resume.rows) if resume is not None else []
        if self.round_shapes and ids.shape[0] % ROWS_STEP:  # copies of the last row
            extra = ROWS_STEP - ids.shape[0] % ROWS_STEP
            ids, mask = torch.cat([ids, ids[-1:].expand(extra, -1)]), torch.cat([mask, mask[-1:].expand(extra, -1)])
            sources += sources[-1:] * extra
        rows, width = ids.shape
        length = max(width + max_new_tokens, cache_length)
        if self.round_shapes:
            length += -length % LENGTH_STEP
        shape = self._shape(rows, length, reset=resume is None)
        shape.serial += 1  # from here on, what an earlier decode left in this cache is gone
        cache = shape.cache
        if prefix is not None:
            for index, layer in enumerate(prefix.layers):  # the shared tokens' keys and values, in every row
                cache.update(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), index)
        if resume is not None:
            _gather_kept(resume.handle.shape, shape, sources, mask[:, :shared])
        valid = torch.zeros(rows, length, dtype=torch.bool, device=device)  # the cached positions a token may see
        valid[:, :width] = mask.bool()
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)

        at = torch.arange(length, device=device)[None, :]
        own = torch.arange(shared, width, device=device)[:, None]  # the prefilled queries' cache positions
        seen = (valid[:, None, :] & (at <= own)[None]) | (at == own)[None]  # (rows, queries, length)
        blocked = torch.finfo(model.dtype).min  # additive masks: what both the eager and the SDPA attention take
        prefill_mask = torch.zeros(seen.shape, dtype=model.dtype, device=device).masked_fill_(~seen, blocked)
        logits = model(input_ids=ids[:, shared:], attention_mask=prefill_mask[:, None],
                       position_ids=positions[:, shared:], cache=cache, use_cache=True,
                       **last_logits(model)).logits[:, -1]
        del seen, prefill_mask
        self.prefilled = mask[:real, shared:].sum(1).tolist()
        shape.bias.zero_().masked_fill_(~valid, blocked)
        shape.position.copy_(mask.long().sum(1, keepdim=True))
        shape.where.fill_(width)

        seq = torch.cat([ids, torch.full((rows, max_new_tokens), self.pad_id, dtype=ids.dtype, device=device)], 1)
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        done[real:] = True  # the rounding's copies
        picker.start(rows, real)
        fed = 0  # steps run: the chosen tokens fed into the cache (the last chosen one never is)
        for k in range(max_new_tokens):
            chosen = picker.choose(seq[:, :width + k], logits)
            seq[:, width + k] = torch.where(done, self.pad_id, chosen)
            done |= picker.finished(seq[:, :width + k + 1], chosen, k)
            if k == max_new_tokens - 1 or (k % CHECK_EVERY == CHECK_EVERY - 1 and bool(done.all())):
                break
            shape.token.copy_(chosen[:, None])
            logits = shape.step()
            fed += 1
        valid[:, width:width + fed] = True  # past a row's stop these hold tokens it did not keep: a resumer counts
        shape.valid.copy_(valid)
        self.last = CacheHandle(shape, shape.serial)
        return seq[:real, width:width + fed + 1]


def _gather_kept(source: _Shape, target: _Shape, rows: list[int], cached: torch.Tensor) -> None:
    """Fill `target`'s first columns from `source`'s cache: row i takes the first `cached[i].sum()` tokens of
    `source` row `rows[i]`, right-aligned in the `cached.shape[1]` columns (where `cached[i]` is 1). Whole
    positions move; `target` may be `source` (each layer is read before it is written)."""
    device, width = cached.device, cached.shape[1]
    index = torch.tensor(rows, device=device)
    count = cached.long().sum(1, keepdim=True)
    had = source.valid[index]  # (rows, source length)
    if not bool((had.sum(1, keepdim=True) >= count).all()):
        raise ValueError("a resumed row asks for more tokens than its kept cache holds")
    rank = had.long().cumsum(1) - 1  # each held column's place in its row's sequence
    target_column = torch.where(had & (rank < count), width - count + rank, width)  # `width`: not taken
    columns = torch.zeros(len(rows), width + 1, dtype=torch.long, device=device)
    columns.scatter_(1, target_column, torch.arange(had.shape[1], device=device).expand(len(rows), -1))
    columns = columns[:, :width]  # the source column of each target column (0 where the mask is 0)
    for old, new in zip(source.cache.layers, target.cache.layers, strict=True):
        keys = old.keys[index[:, None], :, columns].transpose(1, 2)  # (rows, heads, width, dim)
        values = old.values[index[:, None], :, columns].transpose(1, 2)
        if not new.is_initialized:
            new.lazy_initialization(keys, values)
        new.keys[:, :, :width].copy_(keys)
        new.values[:, :, :width].copy_(values)
        new.cumulative_length.fill_(width)


def decode(model: Any, ids: torch.Tensor, mask: torch.Tensor, prefix: Any, shared: int, max_new_tokens: int,
           eos_ids: list[int], pad_id: int, temperature: float = 0.0, top_p: float = 1.0,
           graph: bool | None = None) -> torch.Tensor:
    """The new tokens of each row, (rows, steps taken), each row's tokens after its first EOS set to `pad_id`.

    `ids`/`mask`: (rows, width), left-padded after the first `shared` positions, which every row shares and whose
    KV cache `prefix` (a one-row `DynamicCache`) already holds; `prefix` None and `shared` 0 without one.
    `graph`: replay the step as a CUDA graph (default: when the model is on a GPU); nothing is kept for a later
    call (`GraphDecoder` keeps its graphs).
    """
    return GraphDecoder(model, eos_ids, pad_id, graph, kept=0)(ids, mask, prefix, shared, max_new_tokens,
                                                                temperature, top_p)
