"""The rollout engine end to end on the tiny planner and coder with a real sandbox, driven by scripted text."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from delegate.coder import CoderConfig, build_coder
from delegate.coder.core import Coder
from delegate.executor import Sandbox, SandboxConfig
from delegate.planner import EngineLimits, RolloutEngine, TransformersGeneration, build_protocol
from delegate.planner.protocols import ASK_CODER, CODE_TAGS, ChatProtocol
from tests.scripted import Env, Say, ScriptedText, Tokens

SYSTEM = "Solve the problem. Delegate computation."


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout_s=5.0, workers=2)) as box:
        yield box


class Counting:
    """Forwards to a real coder or sandbox and records the size of each batched call."""

    def __init__(self, inner, events: list | None = None) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self.events = events if events is not None else []  # (what, size) in call order, shareable

    def write_programs(self, requests, contexts=None):
        self.batches.append(len(requests))
        self.events.append(("write", len(requests)))
        return self.inner.write_programs(requests, contexts)

    def run_many(self, codes):
        self.batches.append(len(codes))
        self.events.append(("run", len(codes)))
        return self.inner.run_many(codes)

    def start_many(self, codes):
        self.batches.append(len(codes))
        self.events.append(("start", len(codes)))
        return self.inner.start_many(codes)


@pytest.fixture(scope="module")
def coder(tiny_model_dir):
    with build_coder(CoderConfig(model=str(tiny_model_dir), device="cpu", max_new_tokens=16)) as c:
        yield c


class OneReply:
    """A coder backend whose model always replies with one fenced program (the real `Coder` extracts it)."""

    def __init__(self, program: str) -> None:
        self.reply = f"```python\n{program}\n```"

    def complete(self, conversations):
        return [self.reply for _ in conversations]


@pytest.fixture(scope="module")
def six_sevens():
    """A coder that writes `print(6 * 7)` for any request: its result is known, 42."""
    return Coder(CoderConfig(model="one-reply", cache_size=0), OneReply("print(6 * 7)"))


def rollout(protocol_name, tokenizer, model, sandbox, coder, scripts: dict[str, list], limits=None, tool_chunks=1,
            on_finish=None, **protocol_kw):
    """Run the engine on `scripts` (question -> parts); return trajectories, the forcer and the engine."""
    protocol = build_protocol(protocol_name, protocol_kw.get("markers"), protocol_kw.get("max_request_chars", 200),
                              tokenizer)
    probe = RolloutEngine(protocol, None, tokenizer, sandbox, coder)
    prompts = {q: probe.prompt_ids(SYSTEM, q) for q in scripts}
    forcer = ScriptedText(tokenizer, {tuple(prompts[q]): parts for q, parts in scripts.items()})
    generator = TransformersGeneration(model, tokenizer, temperature=0.0, batch_size=8, logits_processors=[forcer])
    engine = RolloutEngine(protocol, generator, tokenizer, sandbox, coder, limits or EngineLimits(256, 3, 200),
                           tool_chunks=tool_chunks)
    return engine.run(list(scripts), [prompts[q] for q in scripts], on_finish), forcer, engine


def inserted_runs(trajectory):
    """The inserted (env_mask 0) token runs, in order."""
    runs, current = [], []
    for token, mask in zip(trajectory.completion_ids, trajectory.env_mask, strict=True):
        if mask == 0:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [*runs, current] if current else runs


def assert_token_exact(trajectory, forcer, engine, inserted: list[str] | None = None):
    """Every env_mask=1 token is the one the model sampled there (the forcer's record); every run of 0 tokens is one
    inserted block's text tokenized on its own by the tokenizer; the three lists line up.

    `inserted`: each block's literal text, written out by the caller (`"<result>\\n42\\n</result>\\n"`), so that a
    bug in the protocol's rendering or the engine's encoding shows. Without it, a block is the protocol's result
    markers around the call's rendered result (chat: the template's text around it), put together here, not by
    `render_result`."""
    t = trajectory
    assert len(t.completion_ids) == len(t.logprobs) == len(t.env_mask)
    sampled = [tok for tok, m in zip(t.completion_ids, t.env_mask, strict=True) if m == 1]
    forced = forcer.forced[tuple(t.prompt_ids)]
    assert sampled == forced[: len(sampled)]
    assert all(tok == forcer.eos for tok in forced[len(sampled):])  # only a dropped EOS after the answer
    if inserted is None:
        limit = engine.limits.max_result_chars
        inserted = [_block(engine.protocol, call.result.render(limit)) for call in t.tool_calls]
    runs = inserted_runs(t)
    expected = [engine.tokenizer.encode(text, add_special_tokens=False) for text in inserted]
    assert runs == expected, ([engine.tokenizer.decode(run) for run in runs], inserted)
    assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.env_mask, strict=True) if m == 0)


def _block(protocol, result: str) -> str:
    if isinstance(protocol, ChatProtocol):
        return protocol.before + result + protocol.after
    return protocol.markers.result_open + result + protocol.markers.result_close


def test_request_protocol_end_to_end(tokenizer, model, sandbox, six_sevens):
    script = [Say("I need a product. <request>the product of 6 and 7</request>"), Env("</result>\n"),
              Say("So the answer is \\boxed{42}.")]
    (t,), forcer, engine = rollout("request", tokenizer, model, sandbox, six_sevens, {"What is 6 times 7?": script})
    assert t.finish_reason == "answer" and t.answer == "42" and t.violations == []
    assert [(c.request, c.code, c.result.stdout) for c in t.tool_calls] == [("the product of 6 and 7", "print(6 * 7)",
                                                                            "42\n")]
    assert t.text == ("I need a product. <request>the product of 6 and 7</request><result>\n42\n</result>\n"
                      "So the answer is \\boxed{42}.")
    assert_token_exact(t, forcer, engine, ["<result>\n42\n</result>\n"])


def test_code_protocol_runs_the_planners_program(tokenizer, model, sandbox, coder):
    script = [Say("```python\nprint(123456789 * 987654321)\n```\n"), Env("\n```\n"),
              Say("\\boxed{121932631112635269}")]
    (t,), forcer, engine = rollout("code", tokenizer, model, sandbox, None, {"Multiply.": script})
    call = t.tool_calls[0]
    assert call.code == "print(123456789 * 987654321)" and call.result.stdout == "121932631112635269\n"
    assert "```\n```output\n121932631112635269\n```\n" in t.text
    assert t.answer == "121932631112635269" and t.finish_reason == "answer"
    assert_token_exact(t, forcer, engine, ["```output\n121932631112635269\n```\n"])


def test_chat_protocol_inserts_what_the_template_renders(tokenizer, model, sandbox, six_sevens):
    call_json = '{"name": "ask_coder", "arguments": {"request": "6 times 7"}}'
    script = [Say(f"<tool_call>\n{call_json}\n</tool_call>"), Env("<|im_start|>assistant\n"),
              Say("The answer is \\boxed{42}.")]
    (t,), forcer, engine = rollout("chat", tokenizer, model, sandbox, six_sevens, {"What is 6 times 7?": script})
    assert [c.request for c in t.tool_calls] == ["6 times 7"] and t.answer == "42"
    rendered = t.tool_calls[0].result.render(200)
    assert rendered == "42"
    tool_call = {"type": "function", "function": {"name": "ask_coder", "arguments": {"request": "6 times 7"}}}
    conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 6 times 7?"},
                    {"role": "assistant", "content": "", "tool_calls": [tool_call]},
                    {"role": "tool", "content": rendered}]

    template = tokenizer.apply_chat_template(conversation, tools=[ASK_CODER], tokenize=False,
                                             add_generation_prompt=True)
    whole = tokenizer.decode(t.prompt_ids + t.completion_ids, skip_special_tokens=False)
    assert whole == template + "The answer is \\boxed{42}."
    # The tiny tokenizer's template (Qwen2.5's): the assistant turn ends, a user turn carries the response.
    assert_token_exact(t, forcer, engine, ["<|im_end|>\n<|im_start|>user\n<tool_response>\n42\n</tool_response>"
                                           "<|im_end|>\n<|im_start|>assistant\n"])


def test_repl_preset_answers_on_the_next_line(tokenizer, model, sandbox, coder):
    script = [Say("Let me compute.\n>>> 2**64\n"), Env("\n"), Say("\\boxed{18446744073709551616}")]
    (t,), forcer, engine = rollout("repl", tokenizer, model, sandbox, None, {"2 to the 64?": script})
    assert t.text == "Let me compute.\n>>> 2**64\n18446744073709551616\n\\boxed{18446744073709551616}"
    assert t.tool_calls[0].request == "2**64" and t.answer == "18446744073709551616"
    assert_token_exact(t, forcer, engine, ["18446744073709551616\n"])


def test_rounds_batch_all_calls_and_let_rollouts_finish_early(tokenizer, model, sandbox, coder):
    scripts = {
        "Direct?": [Say("It is \\boxed{1}.")],
        "Once?": [Say("```python\nprint(2)\n```\n"), Env("\n```\n"), Say("\\boxed{2}")],
        "Twice?": [Say("```python\nprint(3)\n```\n"), Env("\n```\n"), Say("```python\nprint(4)\n```\n"),
                   Env("\n```\n"), Say("\\boxed{4}")],
    }
    counting = Counting(sandbox)
    trajectories, forcer, engine = rollout("code", tokenizer, model, counting, None, scripts)
    assert [t.answer for t in trajectories] == ["1", "2", "4"]
    assert [t.rounds for t in trajectories] == [1, 2, 3]
    assert counting.batches == [2, 1]  # one run_many per round, holding every call of that round
    inserted = [[], ["```output\n2\n```\n"], ["```output\n3\n```\n", "```output\n4\n```\n"]]
    for t, blocks in zip(trajectories, inserted, strict=True):
        assert_token_exact(t, forcer, engine, blocks)


def test_each_rollout_is_reported_once_at_the_end_of_the_round_that_finished_it(tokenizer, model, sandbox):
    """`on_finish(i)` is what moves a progress bar per problem (issue 43: evaluation's bar sat at 0/20 for minutes,
    then jumped to 20/20): one call per rollout, in the order they finish, while the slower ones still run."""
    scripts = {
        "Twice?": [Say("```python\nprint(3)\n```\n"), Env("\n```\n"), Say("```python\nprint(4)\n```\n"),
                   Env("\n```\n"), Say("\\boxed{4}")],
        "Direct?": [Say("It is \\boxed{1}.")],
        "Once?": [Say("```python\nprint(2)\n```\n"), Env("\n```\n"), Say("\\boxed{2}")],
    }
    counting = Counting(sandbox)
    finished: list[tuple[int, int]] = []  # (position, sandbox calls made by then)
    trajectories, _, _ = rollout("code", tokenizer, model, counting, None, scripts,
                                 on_finish=lambda i: finished.append((i, len(counting.batches))))
    assert [t.rounds for t in trajectories] == [3, 1, 2]
    assert finished == [(1, 1), (2, 2), (0, 2)]  # "Direct?" after round 1, "Once?" after round 2, then "Twice?"


def test_request_calls_of_a_round_go_to_the_coder_in_one_call(tokenizer, model, sandbox, coder):
    scripts = {f"Question {i}?": [Say(f"<request>the value {i}</request>"), Env("</result>\n"), Say("\\boxed{0}")]
               for i in range(3)}
    counting_coder, counting_sandbox = Counting(coder), Counting(sandbox)
    trajectories, _, engine = rollout("request", tokenizer, model, counting_sandbox, counting_coder, scripts)
    assert counting_coder.batches == [3] and counting_sandbox.batches == [3]
    # where the run's time went: every phase ran (two generation rounds, one coder and one sandbox call)
    assert set(engine.seconds) == {"generate", "coder", "executor"} and min(engine.seconds.values()) > 0
    assert [t.tool_calls[0].request for t in trajectories] == ["the value 0", "the value 1", "the value 2"]


def test_tool_chunks_start_each_chunk_in_the_sandbox_before_the_coder_writes_the_next(tokenizer, model, sandbox,
                                                                                       tiny_model_dir):
    scripts = {f"Question {i}?": [Say(f"<request>the value {i} squared</request>"), Env("</result>\n"),
                                  Say("\\boxed{0}")] for i in range(5)}
    events: list = []
    with build_coder(CoderConfig(model=str(tiny_model_dir), device="cpu", max_new_tokens=16, cache_size=0)) as coder:
        whole, _, _ = rollout("request", tokenizer, model, sandbox, coder, scripts)
        chunked, forcer, engine = rollout("request", tokenizer, model, Counting(sandbox, events),
                                          Counting(coder, events), scripts, tool_chunks=2)
    assert events == [("write", 3), ("start", 3), ("write", 2), ("start", 2)]
    assert [t.tool_calls for t in chunked] == [t.tool_calls for t in whole]  # same programs, results, order
    assert [t.completion_ids for t in chunked] == [t.completion_ids for t in whole]
    for t in chunked:
        assert_token_exact(t, forcer, engine, [f"<result>\n{t.tool_calls[0].result.render(200)}\n</result>\n"])
    with pytest.raises(ValueError, match="tool_chunks"):
        RolloutEngine(engine.protocol, None, tokenizer, sandbox, coder, tool_chunks=0)


def test_budget_exhausted_mid_request(tokenizer, model, sandbox, coder):
    script = [Say("<request>the sum of " + "one and " * 40 + "two</request>")]
    (t,), forcer, engine = rollout("request", tokenizer, model, sandbox, coder, {"Long?": script},
                                   limits=EngineLimits(max_completion_tokens=30))
    assert t.finish_reason == "length" and len(t.completion_ids) == 30 and t.tool_calls == []
    assert "unclosed_call" in t.violations and t.answer is None
    assert_token_exact(t, forcer, engine, [])


def test_empty_request_is_a_tool_error_the_planner_sees(tokenizer, model, sandbox, coder):
    script = [Say("<request>  </request>"), Env("</result>\n"), Say("\\boxed{0}")]
    (t,), _, _ = rollout("request", tokenizer, model, sandbox, coder, {"Empty?": script})
    call = t.tool_calls[0]
    assert call.error.startswith("empty request") and call.code == "" and "empty_call" in t.violations
    assert "<result>\nempty request: say what to compute\n</result>" in t.text


def test_nested_open_markers_use_the_innermost_request(tokenizer, model, sandbox, coder):
    script = [Say("<request>draft <request>the product of 2 and 3</request>"), Env("</result>\n"), Say("\\boxed{6}")]
    (t,), _, _ = rollout("request", tokenizer, model, sandbox, coder, {"Nested?": script})
    assert t.tool_calls[0].request == "the product of 2 and 3" and "nested_open" in t.violations


def test_request_longer_than_the_limit_is_refused(tokenizer, model, sandbox, coder):
    script = [Say("<request>" + "x" * 60 + "</request>"), Env("</result>\n"), Say("\\boxed{0}")]
    (t,), _, _ = rollout("request", tokenizer, model, sandbox, coder, {"Too long?": script}, max_request_chars=50)
    assert t.tool_calls[0].error == "request too long (60 characters; the limit is 50)"
    assert "call_too_long" in t.violations and t.tool_calls[0].code == ""


def test_planner_writing_a_result_ends_the_rollout(tokenizer, model, sandbox, coder):
    script = [Say("<request>6 times 7</request>"), Env("</result>\n"), Say("<result>\n42\n</result> \\boxed{42}")]
    (t,), _, _ = rollout("request", tokenizer, model, sandbox, coder, {"Cheat?": script})
    assert t.finish_reason == "format_violation" and "planner_wrote_result" in t.violations
    assert t.answer is None and len(t.tool_calls) == 1


def test_calls_past_the_limit_get_a_notice_then_end(tokenizer, model, sandbox, coder):
    one = [Say("```python\nprint(1)\n```\n"), Env("\n```\n")]
    script = one * 4 + [Say("\\boxed{1}")]
    (t,), _, _ = rollout("code", tokenizer, model, sandbox, None, {"Greedy?": script},
                         limits=EngineLimits(max_completion_tokens=512, max_tool_calls=2))
    assert len(t.tool_calls) == 2 and t.finish_reason == "tool_limit" and "over_tool_limit" in t.violations
    assert t.text.count("Tool limit reached") == 1


def test_invalid_json_in_chat_mode_is_a_tool_error(tokenizer, model, sandbox, coder):
    script = [Say('<tool_call>\n{"name": "ask_coder", "arguments": {"request": 6 times 7}}\n</tool_call>'),
              Env("<|im_start|>assistant\n"), Say("\\boxed{42}")]
    (t,), _, _ = rollout("chat", tokenizer, model, sandbox, coder, {"JSON?": script})
    assert t.tool_calls[0].error.startswith("invalid tool call: not JSON") and "invalid_json" in t.violations
    assert "<tool_response>\ninvalid tool call: not JSON" in t.text and t.answer == "42"


def test_non_utf8_byte_tokens_do_not_break_the_rollout(tokenizer, model, sandbox, coder):
    byte_ff, byte_fe = tokenizer.convert_tokens_to_ids(["ÿ", "þ"])  # byte-level symbols of 0xFF and 0xFE
    script = [Say("<request>odd "), Tokens((byte_ff, byte_fe)), Say(" bytes</request>"), Env("</result>\n"),
              Tokens((byte_ff,)), Say(" \\boxed{7}")]
    (t,), forcer, engine = rollout("request", tokenizer, model, sandbox, coder, {"Bytes?": script})
    assert t.tool_calls[0].request == "odd \ufffd\ufffd bytes" and t.answer == "7"
    assert byte_ff in t.completion_ids
    assert_token_exact(t, forcer, engine, [f"<result>\n{t.tool_calls[0].result.render(200)}\n</result>\n"])


def test_unforced_generation_logprobs_match_a_forward_pass(tokenizer, model):
    import torch

    generator = TransformersGeneration(model, tokenizer, temperature=0.7, batch_size=4)
    prompts = [tokenizer("What is 12 + 30?")["input_ids"], tokenizer("hello")["input_ids"]]
    torch.manual_seed(0)
    for prompt, out in zip(prompts, generator.generate(prompts, [12, 7], ["</request>"]), strict=True):
        assert 0 < len(out.token_ids) <= 12 and len(out.logprobs) == len(out.token_ids)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + out.token_ids])).logits[0, len(prompt) - 1:-1] / 0.7
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(out.token_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(out.logprobs), expected, atol=1e-4)


def test_planned_script_forces_each_round_with_tensor_ops(tokenizer, model, sandbox):
    """The benchmarks' fast forcer: round k writes segment k exactly, then EOS after the last."""
    from tests.scripted import PlannedScript

    protocol = build_protocol("code", None, 2000, tokenizer)
    probe = RolloutEngine(protocol, None, tokenizer, sandbox)
    questions = ["first?", "second question, longer?"]
    prompts = [probe.prompt_ids("Answer.", q) for q in questions]
    segments = {i: [tokenizer.encode(f"```python\nprint({i} + 1)\n```\n", add_special_tokens=False),
                    tokenizer.encode(f"so \\boxed{{{i + 1}}}", add_special_tokens=False)] for i in range(2)}
    forcer = PlannedScript(tokenizer, {tuple(p): segments[i] for i, p in enumerate(prompts)})
    generator = TransformersGeneration(model, tokenizer, temperature=1.0, logits_processors=[forcer])
    trajectories = RolloutEngine(protocol, generator, tokenizer, sandbox, None, EngineLimits(128)).run(questions,
                                                                                                       prompts)
    for i, t in enumerate(trajectories):
        sampled = [tok for tok, m in zip(t.completion_ids, t.env_mask, strict=True) if m]
        assert sampled[: len(segments[i][0])] == segments[i][0]
        assert sampled[len(segments[i][0]):][: len(segments[i][1])] == segments[i][1]
        assert t.answer == str(i + 1) and t.tool_calls[0].result.stdout == f"{i + 1}\n" and t.rounds == 2


@pytest.mark.parametrize("calls", [1, 2])
def test_kv_cache_reuse_across_rounds_changes_nothing(tokenizer, model, sandbox, calls):
    """Rounds continued from the kept KV cache (only the inserted tokens fed) give the same greedy tokens and
    log-probabilities as rounds that re-run the whole prefix; questions of different lengths pad differently."""
    protocol = build_protocol("code", None, 2000, tokenizer)
    probe = RolloutEngine(protocol, None, tokenizer, sandbox)
    questions = ["What is six times seven?", "And what is one hundred and twenty three plus four, please?", "Hi"]
    prompts = [probe.prompt_ids("Answer.", q) for q in questions]
    programs = ["6 * 7", "(123 + 4) * 1000 - 17 * 3", "1"]  # rows stop at different steps: the short ones'
    scripts = {tuple(p): [part for k in range(calls)  # tokens generated after their stop stay in the cache
                          for part in (Say(f"```python\nprint({program} + {k})\n```\n"), Env("\n```\n"))]
               for p, program in zip(prompts, programs, strict=True)}
    runs = {}
    for reuse in (False, True):
        forcer = ScriptedText(tokenizer, scripts, then="free")
        generator = TransformersGeneration(model, tokenizer, temperature=0.0, logits_processors=[forcer],
                                           reuse_cache=reuse)
        engine = RolloutEngine(protocol, generator, tokenizer, sandbox, None, EngineLimits(120, 4))
        runs[reuse] = (engine.run(questions, prompts), generator.reused_tokens)
    (plain, none_reused), (reused, saved) = runs[False], runs[True]
    assert none_reused == 0 and saved > 0
    for a, b in zip(plain, reused, strict=True):
        assert a.rounds == b.rounds >= calls + 1 and a.completion_ids == b.completion_ids
        assert a.env_mask == b.env_mask
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-4


def test_rows_that_wrote_the_same_tokens_resume_together(tokenizer, model, sandbox, monkeypatch):
    """Greedy duplicates (or forced rows) end a round with the same tokens: each continues from its own copy of
    the kept row, all in one call per round, not re-running its prefix in a second call; so do different rows of
    one length that end with the same tokens. The tokens and log-probabilities stay those of re-running the
    prefix."""
    protocol = build_protocol("code", None, 2000, tokenizer)
    probe = RolloutEngine(protocol, None, tokenizer, sandbox)
    questions = ["What is six times seven?", "Hi", "What is six times seven?", "Hi", "What is six times seven?",
                 "What is six times nine?"]
    prompts = [probe.prompt_ids("Answer.", q) for q in questions]
    assert len(prompts[0]) == len(prompts[-1]) and prompts[0] != prompts[-1]  # the same script: the same tail
    scripts = {tuple(p): [part for k in range(2) for part in (Say(f"```python\nprint({len(p)} + {k})\n```\n"),
                                                              Env("\n```\n"))] for p in prompts}
    calls = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(k["input_ids"].shape[0]) or generate(*a, **k))
    runs = {}
    for reuse in (False, True):
        calls.clear()
        generator = TransformersGeneration(model, tokenizer, temperature=0.0, reuse_cache=reuse,
                                           logits_processors=[ScriptedText(tokenizer, scripts, then="free")])
        engine = RolloutEngine(protocol, generator, tokenizer, sandbox, None, EngineLimits(120, 4))
        runs[reuse] = (engine.run(questions, prompts), list(calls), generator.reused_tokens)
    (plain, _, _), (reused, reused_calls, saved) = runs[False], runs[True]
    assert reused_calls == [6, 6, 6]  # one call per round, every row in it
    assert saved >= 2 * sum(len(t.prompt_ids) for t in reused)  # rounds 2 and 3 of every row: prompts at least
    for a, b in zip(plain, reused, strict=True):
        assert a.rounds == b.rounds == 3 and a.completion_ids == b.completion_ids and a.env_mask == b.env_mask
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-4


@pytest.mark.parametrize("reuse", [False, True])
def test_calls_then_free_forces_every_row_then_lets_it_sample(tokenizer, model, sandbox, reuse):
    """The memory benchmark's forcer: whatever the prompt, rows of one prompt included (a GRPO group), each row
    writes the call in its first `calls` rounds and then samples on its own, with or without the kept cache."""
    from tests.scripted import CallsThenFree

    protocol = build_protocol("code", None, 2000, tokenizer)
    probe = RolloutEngine(protocol, None, tokenizer, sandbox)
    questions = ["first?", "first?", "a second, longer question?", "a second, longer question?"]
    prompts = [probe.prompt_ids("Answer.", q) for q in questions]
    segment = tokenizer.encode("```python\nprint(2 + 3)\n```\n", add_special_tokens=False)
    generator = TransformersGeneration(model, tokenizer, temperature=1.0, reuse_cache=reuse,
                                       logits_processors=[CallsThenFree(segment, calls=2)])
    trajectories = RolloutEngine(protocol, generator, tokenizer, sandbox, None, EngineLimits(160, 4)).run(questions,
                                                                                                         prompts)
    for t in trajectories:
        sampled = [tok for tok, m in zip(t.completion_ids, t.env_mask, strict=True) if m]
        assert sampled[:2 * len(segment)] == segment * 2
        assert [call.result.stdout for call in t.tool_calls] == ["5\n", "5\n"] and t.rounds == 3
        assert len(sampled) > 2 * len(segment)  # the third round sampled freely (not stopped at once)
        assert sampled[2 * len(segment):][:len(segment)] != segment


def test_a_repeated_request_and_one_without_numbers_are_recorded(tokenizer, model, sandbox, coder):
    script = [Say("<request>the total number of flowers</request>"), Env("</result>\n"),
              Say("<request>the total number of flowers</request>"), Env("</result>\n"),
              Say("<request>6 times 7</request>"), Env("</result>\n"), Say("\\boxed{42}")]
    (t,), _, _ = rollout("request", tokenizer, model, sandbox, coder, {"Flowers?": script})
    assert t.violations == ["request_without_numbers", "repeated_call", "request_without_numbers"]
    assert len(t.tool_calls) == 3 and t.answer == "42"


def test_a_fenced_program_in_code_mode_with_tags_is_an_unparsed_call(tokenizer, model, sandbox):
    script = [Say("```python\nprint(6 * 7)\n```\nSo it is \\boxed{42}")]
    (t,), _, _ = rollout("code", tokenizer, model, sandbox, None, {"Six sevens?": script}, markers=CODE_TAGS)
    assert t.tool_calls == [] and t.violations == ["unparsed_call"]
    script = [Say("```python\nprint(6 * 7)\n```\n"), Env("\n```\n"), Say("So it is \\boxed{42}")]
    (t,), _, _ = rollout("code", tokenizer, model, sandbox, None, {"Six sevens?": script})  # the default: a call
    assert [c.result.stdout for c in t.tool_calls] == ["42\n"] and t.violations == []


def test_stopping_right_after_a_result_is_recorded(tokenizer, model, sandbox):
    (t,), _, _ = rollout("code", tokenizer, model, sandbox, None,
                         {"Stop?": [Say("```python\nprint(1)\n```\n"), Env("\n```\n")]})
    assert t.finish_reason == "eos" and t.answer is None and t.violations == ["eos_after_result"]


def test_a_fenced_program_in_request_mode_is_an_unparsed_call(tokenizer, model, sandbox, coder):
    (t,), _, _ = rollout("request", tokenizer, model, sandbox, coder,
                         {"Six sevens?": [Say("```python\nprint(6 * 7)\n```\nSo \\boxed{42}")]})
    assert t.tool_calls == [] and t.violations == ["unparsed_call"]
