"""`Coder`: requests in, programs out, in one batched backend call, with a cache and per-request failures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Protocol

from cachetools import LRUCache

from delegate.coder.config import CoderConfig
from delegate.coder.extract import extract_code

Conversation = list[dict[str, str]]


class BackendError(Exception):
    """One request that the backend could not answer (after its retries)."""


class Backend(Protocol):
    def complete(self, conversations: list[Conversation]) -> list[str | BackendError]:
        """One reply per conversation, order kept; a failed request is a `BackendError` in its place."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Program:
    """What the coder made of one request.

    `code` is always runnable text: the extracted program; "" when the reply held no code (the executor reports
    an empty program as an error); or, when the backend failed, a one-line program that raises with the reason,
    so that the planner sees a tool error either way.
    """

    request: str
    code: str
    reply: str
    cached: bool
    failure: str | None = None


@dataclass
class CoderStats:
    requests: int = 0
    cache_hits: int = 0
    deduplicated: int = 0
    generated: int = 0
    failures: int = 0
    empty: int = 0

    @property
    def hit_rate(self) -> float:
        served = self.cache_hits + self.deduplicated
        return served / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "hit_rate": self.hit_rate}


def failure_program(reason: str) -> str:
    return f"raise RuntimeError({('coder failed: ' + reason)!r})"


class Coder:
    """Turns plain-words requests into Python programs.

    At temperature 0 the coder is a pure function of (request, context): repeated pairs come from an LRU cache
    and duplicates inside one call are generated once. A request the backend fails on becomes a failure program;
    `write` never raises for one bad request.
    """

    def __init__(self, config: CoderConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.system_prompt = config.prompt_text()
        self.context_template = config.context_text() if config.context == "question" else None
        self.deterministic = config.temperature == 0.0
        self.cache: LRUCache[tuple[str, str | None], Program] | None = (
            LRUCache(maxsize=config.cache_size) if self.deterministic and config.cache_size > 0 else None)
        self.stats = CoderStats()

    def write(self, requests: Sequence[str], contexts: Sequence[str] | None = None) -> list[str]:
        """One program per request, in order (see `Program.code`)."""
        return [program.code for program in self.write_programs(requests, contexts)]

    def write_programs(self, requests: Sequence[str], contexts: Sequence[str] | None = None) -> list[Program]:
        """Like `write`, with the raw reply, whether it was cached, and why it failed if it did."""
        if contexts is not None and len(contexts) != len(requests):
            raise ValueError(f"{len(requests)} requests but {len(contexts)} contexts")
        keys = [(request, contexts[i] if self.context_template is not None and contexts else None)
                for i, request in enumerate(requests)]
        self.stats.requests += len(keys)
        results: list[Program | None] = [None] * len(keys)
        to_generate: list[tuple[tuple[str, str | None], list[int]]] = []  # (key, the positions it fills)
        in_batch: dict[tuple[str, str | None], list[int]] = {}
        for index, key in enumerate(keys):
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                results[index] = replace(hit, cached=True)
                self.stats.cache_hits += 1
            elif key in in_batch:  # only filled at temperature 0: sampled duplicates are drawn separately
                in_batch[key].append(index)
                self.stats.deduplicated += 1
            else:
                positions = [index]
                to_generate.append((key, positions))
                if self.deterministic and self.config.deduplicate:
                    in_batch[key] = positions
        replies = self.backend.complete([self._conversation(key) for key, _ in to_generate]) if to_generate else []
        self.stats.generated += len(to_generate)
        for (key, positions), reply in zip(to_generate, replies, strict=True):
            program = self._program(key[0], reply)
            if self.cache is not None and not isinstance(reply, BackendError):  # failures may pass: not cached
                self.cache[key] = program
            results[positions[0]] = program
            for index in positions[1:]:
                results[index] = replace(program, cached=True)
        assert all(result is not None for result in results)
        return results  # type: ignore[return-value]

    def _conversation(self, key: tuple[str, str | None]) -> Conversation:
        request, context = key
        user = request if self.context_template is None else self.context_template.format(
            context=context or "", request=request)
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]

    def _program(self, request: str, reply: str | BackendError) -> Program:
        if isinstance(reply, BackendError):
            self.stats.failures += 1
            return Program(request, failure_program(str(reply)), "", cached=False, failure=f"backend: {reply}")
        code = extract_code(reply)
        if code is None:
            self.stats.empty += 1
            return Program(request, "", reply, cached=False, failure="no code in the reply")
        return Program(request, code, reply, cached=False)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Coder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
