"""Where a rollout's seconds go below the engine's three phases (`RolloutEngine.seconds`), for `bench/gpu.py
rollout --breakdown`.

`Breakdown` wraps, for the length of a `with` block, the planner's `TransformersGeneration`, the coder's
`TransformersBackend`, the CUDA-graph decoder's step and the model's forward pass, each with a device
synchronisation before and after, and adds the seconds up per (side, part). The synchronisations cost a little
(`generate` already waits on the GPU every step for its stopping criteria), so the parts are read against each
other and against the same run's totals, not against the unwrapped table.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from delegate.coder import graph_decode
from delegate.coder.transformers_backend import TransformersBackend
from delegate.planner import generation
from delegate.planner.generation import TransformersGeneration


class Breakdown:
    """Seconds and calls per (side, part); `side` is "planner" or "coder", from the call being made."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self.side = "engine"
        self.forwards = 0  # of the current planner `generate` call: the first one is its prefill
        self.in_step = False
        self.steps: list[float] = []  # the planner's decoding steps' seconds, in order

    def _sync(self) -> None:
        if torch.cuda.is_available() and not torch.cuda.is_current_stream_capturing():
            torch.cuda.synchronize()

    @contextmanager
    def timed(self, part: str, side: str | None = None) -> Iterator[None]:
        side = side or self.side
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[(side, part)] += time.perf_counter() - start
            self.calls[(side, part)] += 1

    def _wrap(self, owner: Any, name: str, around: Callable[[Callable[..., Any], tuple, dict], Any],
              undo: list[Callable[[], None]]) -> None:
        inner = getattr(owner, name)
        raw = vars(owner).get(name)  # what to put back (a classmethod's descriptor, not its bound method)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return around(inner, args, kwargs)

        setattr(owner, name, wrapper)
        undo.append(lambda: setattr(owner, name, raw) if raw is not None else delattr(owner, name))

    @contextmanager
    def active(self) -> Iterator[Breakdown]:
        undo: list[Callable[[], None]] = []

        def as_side(side: str, part: str) -> Callable[[Callable[..., Any], tuple, dict], Any]:
            def around(inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
                before, self.side = self.side, side
                try:
                    with self.timed(part, side):
                        return inner(*args, **kwargs)
                finally:
                    self.side = before
            return around

        def part(name: str) -> Callable[[Callable[..., Any], tuple, dict], Any]:
            def around(inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
                with self.timed(name):
                    return inner(*args, **kwargs)
            return around

        def model_generate(inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
            self.forwards = 0
            with self.timed("model.generate"):
                return inner(*args, **kwargs)

        def forward(inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
            if self.in_step or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
                return inner(*args, **kwargs)
            ids = kwargs.get("input_ids", args[0] if args else None)
            rows, width = ids.shape if ids is not None else (0, 0)
            if self.side == "planner":
                self.forwards += 1
                if self.forwards > 1:  # a decoding step: each one's time kept, in order, for `step_rows`
                    start = time.perf_counter()
                    with self.timed("forward: decoding step"):
                        output = inner(*args, **kwargs)
                    self.steps.append(time.perf_counter() - start)
                    return output
                name = "forward: prefill"
            else:
                name = ("forward: shared prefix" if rows == 1 and width > 1 else
                        "forward: prefill" if width > 1 else "forward: decoding step")
            with self.timed(name):
                return inner(*args, **kwargs)

        def step(inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
            me = args[0]
            name = ("step: eager" if me.graph is None else
                    "step: warm-up (eager)" if me.calls < graph_decode.WARMUP_STEPS else
                    "step: capture and first replay" if me.output is None else "step: replay")
            self.in_step = True
            try:
                with self.timed(name):
                    return inner(*args, **kwargs)
            finally:
                self.in_step = False

        self._wrap(TransformersGeneration, "generate", as_side("planner", "total"), undo)
        self._wrap(TransformersGeneration, "_inputs", part("inputs (kept cache selected)"), undo)
        self._wrap(generation._Kept, "after", part("cache kept for the next round"), undo)
        self._wrap(generation, "_continuations", part("continuations matched"), undo)
        self._wrap(TransformersBackend, "complete", as_side("coder", "total"), undo)
        self._wrap(graph_decode.GraphDecoder, "_decode", part("graph decode (all of it)"), undo)
        self._wrap(graph_decode._Step, "__call__", step, undo)
        self._wrap(self.model, "generate", model_generate, undo)
        self._wrap(self.model, "forward", forward, undo)
        for name, what in (("apply_chat_template", "chat templates"), ("batch_decode", "replies decoded")):
            self._wrap(self.tokenizer, name, part(what), undo)
        collecting: dict[str, float] = {}

        def collection(phase: str, info: dict[str, int]) -> None:  # Python's garbage collector, by generation
            if phase == "start":
                collecting["start"] = time.perf_counter()
            elif "start" in collecting:
                key = ("python", f"garbage collection, generation {info['generation']}")
                self.seconds[key] += time.perf_counter() - collecting.pop("start")
                self.calls[key] += 1

        gc.callbacks.append(collection)
        undo.append(lambda: gc.callbacks.remove(collection))
        try:
            yield self
        finally:
            for restore in reversed(undo):
                restore()

    def rows(self) -> list[list[str]]:
        """(side, part, calls, seconds, ms per call), each side's parts by seconds, with what its wrapped calls leave
        unaccounted ("rest of ...")."""
        seconds = dict(self.seconds)
        for (side, parent), children in REST.items():
            if (side, parent) in seconds:
                seconds[(side, f"rest of {parent}")] = seconds[(side, parent)] - sum(
                    seconds.get((side, child), 0.0) for child in children)
        out = []
        for (side, part), value in sorted(seconds.items(), key=lambda kv: (kv[0][0] != "planner", -kv[1])):
            calls = self.calls.get((side, part), 0)
            out.append([side, part, str(calls) if calls else "", f"{value:.3f}",
                        f"{1000 * value / calls:.2f}" if calls else ""])
        return out

    def step_rows(self, group: int) -> list[list[str]]:
        """The planner's decoding steps in groups of `group` (a tool round's tokens), median and slowest: whether a
        round's steps are slower throughout or only some of them."""
        out = []
        for start in range(0, len(self.steps), group):
            part = self.steps[start:start + group]
            out.append(["planner", f"decoding steps {start}-{start + len(part) - 1}", str(len(part)),
                        f"{sum(part):.3f}", f"median {1000 * statistics.median(part):.1f}, "
                                            f"max {1000 * max(part):.1f}"])
        return out


# The parts each timed call holds: the rest of it is its own Python (and any call not wrapped, as tokenizing).
REST = {
    ("planner", "total"): ["inputs (kept cache selected)", "continuations matched", "model.generate",
                           "cache kept for the next round"],
    ("planner", "model.generate"): ["forward: prefill", "forward: decoding step"],
    ("coder", "total"): ["chat templates", "forward: shared prefix", "graph decode (all of it)", "model.generate",
                         "replies decoded"],
    ("coder", "model.generate"): ["forward: prefill", "forward: decoding step"],
    ("coder", "graph decode (all of it)"): ["forward: prefill", "step: warm-up (eager)",
                                            "step: capture and first replay", "step: replay", "step: eager"],
}
