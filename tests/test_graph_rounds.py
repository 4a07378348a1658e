"""The graphed planner keeps each row's KV cache across tool rounds (`GraphGeneration(reuse_cache=True)`): a round
prefills only what the cache lacks (a row's last sampled token and the result inserted after it; in a micro-batch,
as many last columns as the longest of those), and decodes the same tokens, log-probabilities and stops as a
decoder that prefills every sequence whole. On a CPU the decoder runs its step eagerly; the cache layout, the
gather of kept rows and the masks are the same as on a GPU."""

from __future__ import annotations

import pytest
import torch

from delegate.planner import EngineLimits, RolloutEngine, build_protocol
from delegate.planner.graph_generation import GraphGeneration
from tests.scripted import Env, Say, ScriptedText
from tests.test_planner_engine import SYSTEM, model, sandbox, tokenizer  # noqa: F401

QUESTIONS = ("What is 12 + 30?", "hello", "a b c d e f g h i j k", "Compute 7 * 6 please.", "x")


def _assert_same(outputs, reference):
    assert [o.token_ids for o in outputs] == [r.token_ids for r in reference]
    assert [o.stop for o in outputs] == [r.stop for r in reference]
    for o, r in zip(outputs, reference, strict=True):
        assert torch.allclose(torch.tensor(o.logprobs), torch.tensor(r.logprobs), atol=1e-5), (o.logprobs,
                                                                                               r.logprobs)


def _next_round(tokenizer, prompts, outputs, round_number):  # noqa: F811
    """Each row's sequence with a result block of its own length inserted, but the second row's: it paused
    without a call and continues with nothing inserted."""
    inserted = [[] if row == 1 else tokenizer(f"<result>\n{row * 10 ** (row + round_number)}\n</result>\n",
                                              add_special_tokens=False)["input_ids"]
                for row in range(len(prompts))]
    return [p + o.token_ids + extra for p, o, extra in zip(prompts, outputs, inserted, strict=True)], inserted


@pytest.mark.parametrize(("batch_size", "round_shapes"), [(8, False), (8, True), (2, False)])
def test_rounds_resume_from_the_kept_cache_token_exact(tokenizer, model, batch_size, round_shapes):  # noqa: F811
    """Three rounds over rows that stopped at different steps: each round equals a whole-prefix prefill, and the
    micro-batch prefills as many last columns as its longest missing run (inserted tokens plus one: the last
    sampled token, never fed). A new sequence in round 2 extends no kept row and is prefilled whole, in the same
    micro-batch. With two rows a micro-batch, later micro-batches of the same shape overwrite earlier ones'
    caches: those rows are prefilled whole, still exactly."""
    kept = GraphGeneration(model, tokenizer, temperature=0.0, batch_size=batch_size)
    whole = GraphGeneration(model, tokenizer, temperature=0.0, batch_size=batch_size, reuse_cache=False)
    for generator in (kept, whole):
        generator.decoder.round_shapes = round_shapes
    prompts = [tokenizer(q)["input_ids"] for q in QUESTIONS]
    budgets = [3, 9, 5, 14, 7]  # rows stop at different steps, so the cache has columns they did not keep
    outputs = kept.generate(prompts, budgets, [])
    _assert_same(outputs, whole.generate(prompts, budgets, []))
    assert kept.prefilled == [len(p) for p in prompts]
    newcomer = tokenizer("Hi.")["input_ids"]  # shorter than any result block
    for round_number in (2, 3):
        prompts, inserted = _next_round(tokenizer, prompts, outputs, round_number)
        if round_number == 2:
            prompts.append(newcomer)
            inserted.append(None)
        budgets = [12, 6, 10, 8, 11, 9][:len(prompts)]
        reused = kept.reused_tokens
        outputs = kept.generate(prompts, budgets, [])
        _assert_same(outputs, whole.generate(prompts, budgets, []))
        lacking = [len(p) if extra is None else len(extra) + 1 for p, extra in zip(prompts, inserted, strict=True)]
        if batch_size >= len(prompts):
            assert kept.prefilled == [min(len(p), max(lacking)) for p in prompts]
            assert kept.reused_tokens - reused == sum(len(p) for p in prompts) - sum(kept.prefilled)
        else:  # the last micro-batch of each shape resumes; the others are prefilled whole
            assert any(n <= max(lacking) < len(p) for n, p in zip(kept.prefilled, prompts, strict=True))
            assert all(n == len(p) or n <= max(lacking) for n, p in zip(kept.prefilled, prompts, strict=True))
    assert whole.reused_tokens == 0
    kept.release()
    kept.generate(prompts, [4] * len(prompts), [])  # after release nothing is resumed
    assert kept.prefilled == [len(p) for p in prompts]


def test_a_resumed_row_prefills_its_inserted_tokens_and_its_last_sampled_one(tokenizer, model):  # noqa: F811
    kept = GraphGeneration(model, tokenizer, temperature=0.0)
    whole = GraphGeneration(model, tokenizer, temperature=0.0, reuse_cache=False)
    prompt = tokenizer(QUESTIONS[0])["input_ids"]
    first = kept.generate([prompt], [6], [])
    _assert_same(first, whole.generate([prompt], [6], []))
    inserted = tokenizer("<result>\n1234567\n</result>\n", add_special_tokens=False)["input_ids"]
    sequence = prompt + first[0].token_ids + inserted
    _assert_same(kept.generate([sequence], [8], []), whole.generate([sequence], [8], []))
    assert kept.prefilled == [len(inserted) + 1] and whole.prefilled == [len(sequence)]


class _Recorded:
    """A generation backend that records each call's sequences, outputs and prefilled token counts."""

    def __init__(self, inner: GraphGeneration) -> None:
        self.inner = inner
        self.calls: list[tuple[list[list[int]], list, list[int]]] = []

    def generate(self, prompts, budgets, stop_strings):
        outputs = self.inner.generate(prompts, budgets, stop_strings)
        self.calls.append(([list(p) for p in prompts], outputs, list(self.inner.prefilled)))
        return outputs

    def release(self) -> None:
        self.inner.release()


def test_tool_rounds_of_the_engine_prefill_only_what_was_inserted(tokenizer, model, sandbox):  # noqa: F811
    """The engine's rounds (code protocol, a real sandbox): each rollout runs a program, then writes on its own
    from the kept cache; the trajectories equal those of whole-prefix prefills (tokens, masks, log-probabilities)
    and each round prefilled, for every sequence, as many tokens as the longest run a sequence's cache lacked
    (its last sampled token and the result block after it), not its prefix."""
    protocol = build_protocol("code", None, 2000, tokenizer)
    probe = RolloutEngine(protocol, None, tokenizer, sandbox, None)
    scripts = {f"Question {i}?": [Say(f"Let me compute{' it' * i}.\n```python\nprint({i} * 1000003)\n```\n"),
                                  Env(protocol.markers.result_close)] for i in range(4)}
    prompts = [probe.prompt_ids(SYSTEM, q) for q in scripts]
    runs = {}
    for reuse in (True, False):
        forcer = ScriptedText(tokenizer, {tuple(p): parts for p, parts in zip(prompts, scripts.values(), strict=True)},
                              then="free")
        generator = _Recorded(GraphGeneration(model, tokenizer, temperature=0.0, batch_size=8,
                                              logits_processors=[forcer], reuse_cache=reuse))
        engine = RolloutEngine(protocol, generator, tokenizer, sandbox, None, EngineLimits(160, 2, 200))
        runs[reuse] = engine.run(list(scripts), prompts), generator, forcer, engine
    (kept, recorded, forcer, _), (whole, *_) = runs[True], runs[False]
    for k, w in zip(kept, whole, strict=True):
        assert k.completion_ids == w.completion_ids and k.env_mask == w.env_mask
        assert torch.allclose(torch.tensor(k.logprobs), torch.tensor(w.logprobs), atol=1e-5)
        assert len(k.tool_calls) >= 1 and k.tool_calls[0].result.stdout.strip().isdigit()
        sampled = [token for token, m in zip(k.completion_ids, k.env_mask, strict=True) if m]
        assert sampled[:len(forcer.forced[tuple(k.prompt_ids)])] == forcer.forced[tuple(k.prompt_ids)]
        assert len(sampled) > len(forcer.forced[tuple(k.prompt_ids)])  # the model wrote on its own after the result
    assert len(recorded.calls) >= 2
    resumed = 0
    for (before, outputs, _), (after, _, prefilled) in zip(recorded.calls, recorded.calls[1:], strict=False):
        lacking = []
        for sequence in after:
            row = next(r for r, b in enumerate(before) if sequence[:len(b)] == b)  # the rollout's last round
            lacking.append(len(sequence) - len(before[row]) - len(outputs[row].token_ids) + 1)  # inserted + 1
        assert prefilled == [min(len(sequence), max(lacking)) for sequence in after]
        assert max(prefilled) < min(len(sequence) for sequence in after)
        resumed += len(after)
    assert resumed >= len(prompts)
