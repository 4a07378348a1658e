"""What a prefill runs, kernel by kernel: `coder.attention`'s attention with the query heads packed onto their
key/value heads equals transformers' SDPA attention, runs on the key/value heads themselves (no copies), and only
where no gradient is recorded, and a model runs it only inside `packed_attention`, with the same generations; the
planner's and the coder's generation run a frozen output layer as one matrix product (`last_logits`), not one per
row."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from delegate.coder import CoderConfig, build_coder
from delegate.coder.attention import NAME, packed_attention, packed_sdpa
from delegate.planner import TransformersGeneration
from delegate.training.tiny import build_model, build_tokenizer


class Grouped(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


def inputs(rows: int = 4, tokens: int = 5, positions: int = 9, kv_heads: int = 2, dim: int = 8, bool_mask: bool = True,
           mask_tokens: int | None = None):
    torch.manual_seed(0)
    query = torch.randn(rows, kv_heads * Grouped.num_key_value_groups, tokens, dim)
    key, value = torch.randn(rows, kv_heads, positions, dim), torch.randn(rows, kv_heads, positions, dim)
    padding = torch.arange(positions)[None, :] < torch.tensor([0, 2, 3, 1][:rows])[:, None]  # left padding per row
    causal = torch.arange(positions)[None, :] <= torch.arange(positions - tokens, positions)[:, None]
    allowed = ~padding[:, None, None, :] & causal[None, None]
    if mask_tokens == 1:
        allowed = ~padding[:, None, None, :]
    mask = allowed if bool_mask else torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float).min)
    return query, key, value, mask


@pytest.fixture
def queries_seen(monkeypatch):
    """The head count of every query that reaches PyTorch's attention (a spy: the real function still runs)."""
    seen: list[int] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        seen.append(query.shape[1])
        return real(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("bool_mask", [True, False])
@pytest.mark.parametrize("mask_tokens", [None, 1])
def test_packed_attention_equals_transformers_on_the_key_value_heads(bool_mask, mask_tokens, queries_seen):
    query, key, value, mask = inputs(bool_mask=bool_mask, mask_tokens=mask_tokens)
    with torch.inference_mode():
        expected, _ = sdpa_attention_forward(Grouped(), query, key, value, mask, scaling=0.3)
        got, _ = packed_sdpa(Grouped(), query, key, value, mask, scaling=0.3)
    assert got.shape == expected.shape == (4, 5, 6, 8)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert queries_seen == [6, 2]  # transformers' copies the key/value heads; ours reads the 2 of them


def test_with_gradients_the_attention_is_transformers_own(queries_seen):
    query, key, value, mask = inputs()
    packed_sdpa(Grouped(), query.requires_grad_(), key, value, mask)
    assert queries_seen == [6]


def test_a_model_runs_it_only_inside_the_block_and_generates_the_same():
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, heads=4, kv_heads=2).eval()
    model.config._attn_implementation = "sdpa"
    prompts = ["2 + 2 =", "the least common multiple of 38 and 16 is"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    assert batch["attention_mask"].min() == 0  # left-padded: the prefill has a mask
    settings = dict(max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True,
                    pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        plain = model.generate(**batch, **settings)
        with packed_attention(model):
            assert model.config._attn_implementation == NAME
            packed = model.generate(**batch, **settings)
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(plain.sequences, packed.sequences)
    torch.testing.assert_close(torch.stack(packed.scores), torch.stack(plain.scores), rtol=1e-4, atol=1e-4)


def test_other_attention_implementations_are_left_alone():
    model = build_model(build_tokenizer())
    model.config._attn_implementation = "eager"
    with packed_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "eager"


def output_layer_products(run, vocab: int) -> dict[str, int]:
    """How many matrix products of each kind multiplied by the output layer (vocabulary-wide) while `run` ran."""
    from torch.profiler import profile

    with profile(record_shapes=True) as prof:
        run()
    counts: dict[str, int] = {}
    for event in prof.events():
        if event.name in ("aten::mm", "aten::bmm") and any(s and s[-1] == vocab for s in event.input_shapes):
            counts[event.name] = counts.get(event.name, 0) + 1
    return counts


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_a_frozen_output_layer_runs_as_one_matrix_product_per_step(tiny_model_dir, cuda_graph):
    """A frozen model (the coder; the planner's LoRA base) under inference mode: the count `logits_to_keep=1`
    would make the prefill's output layer a batched product with the weight broadcast to every row."""
    with build_coder(CoderConfig(model=str(tiny_model_dir), device="cpu", max_new_tokens=4, cache_size=0,
                                 cuda_graph=cuda_graph)) as coder:
        model = coder.backend.model
        vocab = model.config.vocab_size
        counts = output_layer_products(lambda: coder.write(["2 to the power 100", "the sum of 1 to 100"]), vocab)
        assert "aten::bmm" not in counts and counts["aten::mm"] >= 4  # the prefill and three decoding steps
        tokenizer = coder.backend.tokenizer
        generation = TransformersGeneration(model, tokenizer, temperature=0.0)
        prompts = [tokenizer("What is 12 + 30?")["input_ids"], tokenizer("hello")["input_ids"]]
        counts = output_layer_products(lambda: generation.generate(prompts, [3, 3], []), vocab)
        assert "aten::bmm" not in counts and counts["aten::mm"] >= 3
