"""The rollout engine: batched rounds of generation and tool calls, token-in/token-out.

Each round, every live rollout generates until a stop marker, EOS or its budget; then all their calls go to
the coder in one `write_programs` call and all programs to the sandbox in one `run_many` call; the rendered
results are tokenized on their own and appended with `env_mask` 0. Sampled tokens are never re-tokenized.
With `tool_chunks` > 1 the round's calls go to the coder in that many chunks, and each chunk's programs start in
the sandbox (`start_many`) while the coder writes the next, so that the sandbox's time hides behind the coder's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from delegate.executor import ExecutionResult
from delegate.planner.generation import Generated, GenerationBackend
from delegate.planner.protocols import Call
from delegate.planner.protocols import Protocol as ToolProtocol
from delegate.planner.sync import RankSync
from delegate.planner.trajectory import ToolCall, Trajectory, boxed_end, last_boxed

TOOL_LIMIT_NOTICE = "Tool limit reached: no more calls. Give your final answer now."
PHASES = ("generate", "coder", "executor")  # where a run's wall time goes (`RolloutEngine.seconds`)


class CoderLike(Protocol):
    def write_programs(self, requests: Sequence[str], contexts: Sequence[str] | None = None) -> list[Any]: ...


class ExecutorLike(Protocol):
    def run_many(self, codes: list[str]) -> list[ExecutionResult]: ...


class RunningLike(Protocol):
    def results(self) -> list[ExecutionResult]: ...


@dataclass(frozen=True)
class EngineLimits:
    max_completion_tokens: int = 2048  # the whole completion, inserted tokens included
    max_tool_calls: int = 4  # per rollout; one call past it gets a notice, a second ends the rollout
    max_result_chars: int = 1000  # of each rendered result
    stop_at_answer: bool = True  # a complete \boxed{} ends the rollout


@dataclass
class _Rollout:
    trajectory: Trajectory
    segment_start: int = 0  # where in completion_ids the text since the last insertion begins
    over_limit: int = 0
    pending: Call | None = None


class RolloutEngine:
    def __init__(self, protocol: ToolProtocol, generator: GenerationBackend, tokenizer: Any,
                 executor: ExecutorLike, coder: CoderLike | None = None, limits: EngineLimits | None = None,
                 sync: RankSync | None = None, tool_chunks: int = 1) -> None:
        """`sync`: with several processes, keeps every rank making the same rounds (see `planner.sync`).
        `tool_chunks`: see the module's docstring (an executor without `start_many` runs each round at once)."""
        if tool_chunks < 1:
            raise ValueError(f"tool_chunks must be at least 1, not {tool_chunks}")
        if protocol.uses_coder and coder is None and (limits is None or limits.max_tool_calls > 0):
            raise ValueError(f"the {protocol.name!r} protocol needs a coder (unless no call is allowed)")
        self.protocol = protocol
        self.generator = generator
        self.tokenizer = tokenizer
        self.executor = executor
        self.coder = coder
        self.limits = limits or EngineLimits()
        self.sync = sync
        self.tool_chunks = tool_chunks
        self.rounds = 0  # of the last run: rounds made, and rounds this rank had nothing to generate (synced)
        self.idle_rounds = 0
        self.seconds = dict.fromkeys(PHASES, 0.0)  # of the last run: wall time in each phase
        # a coder that sees only the request (the default) can compute nothing from a request without numbers
        self.coder_blind = getattr(getattr(coder, "config", None), "context", "none") == "none"

    def prompt_ids(self, system_prompt: str, question: str) -> list[int]:
        text = self.protocol.prompt_text(self.tokenizer, system_prompt, question)
        return self._encode(text)

    def run(self, questions: Sequence[str], prompt_ids: Sequence[list[int]],
            on_finish: Callable[[int], None] | None = None) -> list[Trajectory]:
        """Roll out one trajectory per (question, prompt ids) pair; order kept. `on_finish(i)` is called once for
        each rollout, with its position, at the end of the round that finished it (its trajectory not yet
        finalised): a progress bar can then move per problem while the slowest rollouts of a batch still run."""
        rollouts = [_Rollout(Trajectory(question=q, prompt_ids=list(p))) for q, p in zip(questions, prompt_ids,
                                                                                          strict=True)]
        position = {id(r): i for i, r in enumerate(rollouts)}
        self.rounds = self.idle_rounds = 0
        self.seconds = dict.fromkeys(PHASES, 0.0)
        while True:
            live = [r for r in rollouts if r.trajectory.finish_reason is None]
            if not (live if self.sync is None else self.sync.max(len(live))):
                break
            self.rounds += 1
            self.idle_rounds += not live  # other ranks still generate: this one keeps step with an empty call
            budgets = [self.limits.max_completion_tokens - len(r.trajectory.completion_ids) for r in live]
            with self._timed("generate"):
                generated = self.generator.generate([r.trajectory.prompt_ids + r.trajectory.completion_ids
                                                     for r in live], budgets, self.protocol.stop_strings)
            for rollout, output in zip(live, generated, strict=True):
                rollout.trajectory.rounds += 1
                self._take(rollout, output)
            self._run_tools([r for r in live if r.pending is not None])
            if on_finish is not None:
                for rollout in live:
                    if rollout.trajectory.finish_reason is not None:
                        on_finish(position[id(rollout)])
        release = getattr(self.generator, "release", None)
        if release is not None:  # kept KV caches serve the next round of this run only
            release()
        for rollout in rollouts:
            self._finalise(rollout.trajectory)
        return [r.trajectory for r in rollouts]

    # --- one rollout's new tokens -----------------------------------------------------------------------------
    def _take(self, rollout: _Rollout, output: Generated) -> None:
        t = rollout.trajectory
        t.completion_ids += output.token_ids
        t.logprobs += output.logprobs
        t.env_mask += [1] * len(output.token_ids)
        segment = self._decode(t.completion_ids[rollout.segment_start:])
        if self.protocol.wrote_result(segment):
            t.violations.append("planner_wrote_result")
            t.finish_reason = "format_violation"
        elif self.limits.stop_at_answer and boxed_end(segment) is not None:
            self._cut_after_answer(rollout)
            t.finish_reason = "answer"
        elif (call := self.protocol.find_call(segment)) is not None:
            t.violations += call.violations
            if any(previous.request == call.text for previous in t.tool_calls):
                t.violations.append("repeated_call")
            if self.protocol.uses_coder and self.coder_blind and not re.search(r"\d", call.text):
                t.violations.append("request_without_numbers")
            if len(t.tool_calls) < self.limits.max_tool_calls:
                rollout.pending = call
            elif rollout.over_limit == 0:
                rollout.over_limit = 1
                t.violations.append("over_tool_limit")
                self._insert(rollout, self.protocol.render_result(TOOL_LIMIT_NOTICE))
            else:
                t.finish_reason = "tool_limit"
        elif output.stop == "eos":
            t.finish_reason = "eos"
            after = t.completion_ids[rollout.segment_start:]
            if t.tool_calls and not self.tokenizer.decode(after, skip_special_tokens=True).strip():
                t.violations.append("eos_after_result")  # stopped right after a result, with no answer
        elif output.stop == "length" or len(t.completion_ids) >= self.limits.max_completion_tokens:
            if self.protocol.open_call(segment):
                t.violations.append("unclosed_call")
            t.finish_reason = "length"
        # else: a stop string that closed no call (a stray marker, an ordinary REPL line): generation goes on

    def _cut_after_answer(self, rollout: _Rollout) -> None:
        """Drop the sampled tokens after the one that closes the first complete \\boxed{} of the segment."""
        t = rollout.trajectory
        tokens = t.completion_ids[rollout.segment_start:]
        low, high = 1, len(tokens)  # the shortest prefix whose text holds a complete box
        while low < high:
            mid = (low + high) // 2
            if boxed_end(self._decode(tokens[:mid])) is None:
                low = mid + 1
            else:
                high = mid
        keep = rollout.segment_start + high
        del t.completion_ids[keep:], t.logprobs[keep:], t.env_mask[keep:]

    # --- tools ------------------------------------------------------------------------------------------------
    def _run_tools(self, rollouts: list[_Rollout]) -> None:
        if not rollouts:
            return
        runnable = [r for r in rollouts if r.pending is not None and r.pending.error is None]
        codes, programs, results = self._write_and_run(runnable)
        outcome = {id(r): (code, program, result)
                   for r, code, program, result in zip(runnable, codes, programs, results, strict=True)}
        for rollout in rollouts:
            call = rollout.pending
            assert call is not None
            rollout.pending = None
            if call.error is not None:
                record = ToolCall(request=call.text, code="", error=call.error,
                                  result=ExecutionResult(status="error", error=call.error))
            else:
                code, program, result = outcome[id(rollout)]
                record = ToolCall(request=call.text, code=code, result=result,
                                  cached=bool(getattr(program, "cached", False)),
                                  coder_failure=getattr(program, "failure", None))
            rollout.trajectory.tool_calls.append(record)
            self._insert(rollout, self.protocol.render_result(record.result.render(self.limits.max_result_chars)))

    def _write_and_run(self, runnable: list[_Rollout]) -> tuple[list[str], list[Any], list[ExecutionResult]]:
        """The programs of the rollouts' calls (coder-written, or the call itself) and their results, in order."""
        calls = [r.pending for r in runnable if r.pending is not None]
        start_many = getattr(self.executor, "start_many", None)
        pipelined = self.protocol.uses_coder and self.tool_chunks > 1 and start_many is not None
        size = max(1, -(-len(calls) // self.tool_chunks)) if pipelined else max(1, len(calls))
        codes: list[str] = []
        programs: list[Any] = []
        running: list[RunningLike] = []
        for start in range(0, len(calls), size):
            part, owners = calls[start:start + size], runnable[start:start + size]
            written: list[Any] = [None] * len(part)
            if self.protocol.uses_coder:
                assert self.coder is not None
                with self._timed("coder"):
                    written = self.coder.write_programs([c.text for c in part],
                                                        contexts=[r.trajectory.question for r in owners])
            part_codes = [p.code if p is not None else self.protocol.program(c)
                          for c, p in zip(part, written, strict=True)]
            codes += part_codes
            programs += written
            if pipelined:
                assert start_many is not None
                running.append(start_many(part_codes))  # runs while the coder writes the next chunk
        with self._timed("executor"):
            if pipelined:
                results = [result for chunk in running for result in chunk.results()]
            else:
                results = self.executor.run_many(codes) if codes else []
        return codes, programs, results

    def _insert(self, rollout: _Rollout, text: str) -> None:
        """Append environment text, tokenized on its own, masked from the loss; cut at the token budget."""
        t = rollout.trajectory
        ids = self._encode(text)
        room = self.limits.max_completion_tokens - len(t.completion_ids)
        if len(ids) >= room:
            ids = ids[:room]
            t.finish_reason = "length"
        t.completion_ids += ids
        t.logprobs += [0.0] * len(ids)
        t.env_mask += [0] * len(ids)
        rollout.segment_start = len(t.completion_ids)

    # --- helpers ----------------------------------------------------------------------------------------------
    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        """Wall time of a phase. The backends return host data (token lists, programs, results), so a GPU's work
        is finished when the phase ends."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def _finalise(self, t: Trajectory) -> None:
        t.text = self._decode(t.completion_ids)
        planner_text = self._decode([tok for tok, m in zip(t.completion_ids, t.env_mask, strict=True) if m])
        t.answer = last_boxed(planner_text)
        if self.protocol.unparsed_call(planner_text):
            t.violations.append("unparsed_call")

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)
