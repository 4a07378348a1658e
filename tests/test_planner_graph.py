"""The planner decoding through the CUDA-graph decoder (`planner.cuda_graph`): the same tokens, log-probabilities,
stops and budgets as `generate`. On a CPU the decoder runs its step eagerly (the loop, the picker and the masks
are the same); `test_planner_gpu.py` replays it from a captured graph."""

from __future__ import annotations

import pytest
import torch

from delegate.planner import EngineLimits, RolloutEngine, TransformersGeneration, build_protocol
from delegate.planner.ban import BanText
from delegate.planner.graph_generation import GraphGeneration
from tests.scripted import Env, Say, ScriptedText
from tests.test_planner_engine import SYSTEM, assert_token_exact, coder, model, sandbox, tokenizer  # noqa: F401


def test_greedy_decoding_equals_generate(tokenizer, model):  # noqa: F811
    """Rows of different lengths, budgets and stops (EOS, a stop string, the budget): tokens and reasons equal,
    log-probabilities within float error."""
    prompts = [tokenizer(text)["input_ids"] for text in ("What is 12 + 30?", "hello", "a b c d e f g h i j k")]
    budgets, stops = [24, 5, 40], ["3", " b"]
    reference = TransformersGeneration(model, tokenizer, temperature=0.0, batch_size=2).generate(prompts, budgets,
                                                                                                 stops)
    graphed = GraphGeneration(model, tokenizer, temperature=0.0, batch_size=2).generate(prompts, budgets, stops)
    assert [g.token_ids for g in graphed] == [r.token_ids for r in reference]
    assert [g.stop for g in graphed] == [r.stop for r in reference]
    assert "length" in {g.stop for g in graphed} and len(graphed[1].token_ids) <= 5
    for g, r in zip(graphed, reference, strict=True):
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(r.logprobs), atol=1e-4)


def test_sampled_logprobs_match_a_forward_pass(tokenizer, model):  # noqa: F811
    generator = GraphGeneration(model, tokenizer, temperature=0.7, top_p=0.9, batch_size=4)
    prompts = [tokenizer("What is 12 + 30?")["input_ids"], tokenizer("hello")["input_ids"]]
    torch.manual_seed(0)
    outputs = generator.generate(prompts, [12, 7], ["</request>"])
    for prompt, out in zip(prompts, outputs, strict=True):
        assert 0 < len(out.token_ids) <= 12 and len(out.logprobs) == len(out.token_ids)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + out.token_ids])).logits[0, len(prompt) - 1:-1] / 0.7
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(out.token_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(out.logprobs), expected, atol=1e-4)


@pytest.mark.parametrize("protocol_name", ["request", "code"])
def test_scripted_rollouts_with_tool_rounds_are_token_exact(tokenizer, model, sandbox, coder,  # noqa: F811
                                                           protocol_name):
    protocol = build_protocol(protocol_name, None, 2000, tokenizer)
    probe = RolloutEngine(protocol, None, tokenizer, sandbox, coder)
    call = {"request": "<request>{i} times 1000003</request>", "code": "```python\nprint({i} * 1000003)\n```\n"}
    scripts = {f"Question {i}?": [Say(call[protocol_name].format(i=i)), Env(protocol.markers.result_close),
                                  Say(f"\\boxed{{{i * 1000003}}}")] for i in range(5)}
    prompts = [probe.prompt_ids(SYSTEM, q) for q in scripts]
    forcer = ScriptedText(tokenizer, {tuple(p): parts for p, parts in zip(prompts, scripts.values(), strict=True)})
    generator = GraphGeneration(model, tokenizer, temperature=0.0, batch_size=2, logits_processors=[forcer])
    generator.decoder.round_shapes = True  # as with a graph: rows and cache length rounded up, shapes kept
    engine = RolloutEngine(protocol, generator, tokenizer, sandbox, coder if protocol_name == "request" else None,
                           EngineLimits(256, 3, 200))
    trajectories = engine.run(list(scripts), prompts)
    assert [t.answer for t in trajectories] == [str(i * 1000003) for i in range(5)]
    for t in trajectories:
        assert len(t.tool_calls) == 1 and t.rounds == 2
        if protocol_name == "code":  # the tiny coder's programs are noise; the planner's own are exact
            assert t.tool_calls[0].result.stdout == t.answer + "\n"
        assert_token_exact(t, forcer, engine)
    assert generator.decoder.built == 1  # every chunk and round replays one shape (the cache length only grows)


def test_the_no_tools_ban_holds_in_the_graphed_decoder(tokenizer, model):  # noqa: F811
    """A processor that pushes `<request>` token by token: with the ban, the marker never appears."""
    from tests.test_evaluate import WantsToCall

    marker = "<code>"
    pushed = WantsToCall(tokenizer)
    prompts = [tokenizer("Say something.")["input_ids"]] * 2
    free = GraphGeneration(model, tokenizer, temperature=0.0, logits_processors=[pushed]).generate(prompts, [12, 12],
                                                                                                  [])
    assert all(marker in tokenizer.decode(g.token_ids) for g in free)
    banned = GraphGeneration(model, tokenizer, temperature=0.0, logits_processors=[pushed, BanText(tokenizer, marker)])
    assert not any(marker in tokenizer.decode(g.token_ids) for g in banned.generate(prompts, [12, 12], []))


def test_a_lora_policy_decodes_alike_and_a_replay_reads_updated_weights(tokenizer, tiny_model_dir):  # noqa: F811
    """The training policy is a PEFT model: the graphed decoder drives it through its base model's signature, and
    after an in-place update of the LoRA weights (what the optimizer does) the same decoder, its shape kept, decodes
    the new policy. (Here the step runs eagerly; on the H200 a 4-step GRPO run of the real 0.5B replayed it.)"""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).eval()
    prompts = [tokenizer(text)["input_ids"] for text in ("What is 12 + 30?", "hello there")]
    graphed = GraphGeneration(policy, tokenizer, temperature=0.0)
    outputs = []
    for _ in range(2):
        reference = TransformersGeneration(policy, tokenizer, temperature=0.0).generate(prompts, [16, 16], [])
        outputs.append([g.token_ids for g in graphed.generate(prompts, [16, 16], [])])
        assert outputs[-1] == [r.token_ids for r in reference]
        with torch.no_grad():  # a large in-place step on every LoRA B matrix (zero at the start)
            for name, parameter in policy.named_parameters():
                if "lora_B" in name:
                    parameter.add_(torch.randn_like(parameter) * 2.0)
    assert graphed.decoder.built == 1 and outputs[0] != outputs[1]  # the update changed what it writes
