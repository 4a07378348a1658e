"""The transformers generation backend on a CUDA device: the dynamic KV cache (re-run or kept across rounds) and the
static one."""

from __future__ import annotations

import pytest
import torch

from delegate.executor import Sandbox, SandboxConfig
from delegate.planner import EngineLimits, RolloutEngine, TransformersGeneration, build_protocol
from tests.scripted import Env, Say, ScriptedText
from tests.test_planner_engine import SYSTEM, assert_token_exact

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout_s=10.0)) as box:  # started before this module touches CUDA
        yield box


def scripted_code_calls(tokenizer, sandbox):
    """The code protocol, six questions each answered by one scripted call, their prompts, and the forcer."""
    protocol = build_protocol("code", None, 2000, tokenizer)
    probe = RolloutEngine(protocol, None, tokenizer, sandbox)
    scripts = {f"Question {i}?": [Say(f"```python\nprint({i} * 1000003)\n```\n"), Env("\n```\n"),
                                  Say(f"\\boxed{{{i * 1000003}}}")] for i in range(6)}
    prompts = [probe.prompt_ids(SYSTEM, q) for q in scripts]
    forcer = ScriptedText(tokenizer, {tuple(p): parts for p, parts in zip(prompts, scripts.values(), strict=True)})
    return protocol, scripts, prompts, forcer


@pytest.mark.parametrize(("cache", "reuse"), [(None, False), (None, True), ("static", False)])
def test_scripted_rollouts_are_token_exact_on_the_gpu(tiny_model_dir, sandbox, cache, reuse):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).to("cuda").eval()
    protocol, scripts, prompts, forcer = scripted_code_calls(tokenizer, sandbox)
    generator = TransformersGeneration(model, tokenizer, temperature=0.0, batch_size=4, cache_implementation=cache,
                                       logits_processors=[forcer], reuse_cache=reuse)
    engine = RolloutEngine(protocol, generator, tokenizer, sandbox, None, EngineLimits(256, 3, 200))
    trajectories = engine.run(list(scripts), prompts)
    assert (generator.reused_tokens > 0) == reuse
    assert [t.answer for t in trajectories] == [str(i * 1000003) for i in range(6)]
    for t in trajectories:
        assert t.tool_calls[0].result.stdout == t.answer + "\n"
        assert_token_exact(t, forcer, engine)


def test_the_graphed_planner_replays_one_captured_step_and_stays_token_exact(tiny_model_dir, sandbox):
    """`planner.cuda_graph` on a GPU: the step captured once and replayed across rounds and calls; the scripted
    rollouts token-exact; greedy free decoding equal to `generate`'s in fp32."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from delegate.planner.graph_generation import GraphGeneration

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).to("cuda").eval()
    protocol, scripts, prompts, forcer = scripted_code_calls(tokenizer, sandbox)
    generator = GraphGeneration(model, tokenizer, temperature=0.0, batch_size=4, logits_processors=[forcer])
    assert generator.decoder.graph
    engine = RolloutEngine(protocol, generator, tokenizer, sandbox, None, EngineLimits(256, 3, 200))
    for _ in range(2):  # the second run replays what the first captured
        forcer.forced = {prompt: [] for prompt in forcer.scripts}
        trajectories = engine.run(list(scripts), prompts)
        assert [t.answer for t in trajectories] == [str(i * 1000003) for i in range(6)]
        for t in trajectories:
            assert t.tool_calls[0].result.stdout == t.answer + "\n"
            assert_token_exact(t, forcer, engine)
    assert generator.decoder.built == 1

    free = [tokenizer(text)["input_ids"] for text in ("What is 12 + 30?", "hello", "a b c d e f g h i j k")]
    reference = TransformersGeneration(model, tokenizer, temperature=0.0).generate(free, [24, 5, 40], ["3"])
    graphed = GraphGeneration(model, tokenizer, temperature=0.0).generate(free, [24, 5, 40], ["3"])
    assert [g.token_ids for g in graphed] == [r.token_ids for r in reference]
    assert [g.stop for g in graphed] == [r.stop for r in reference]
