"""The `transformers` coder backend on the tiny local model: batching, order, micro-batches, cache, dedup."""

from __future__ import annotations

import pytest

from delegate.coder import CoderConfig, build_coder

REQUESTS = ["the least common multiple of 38 and 16", "2 to the power 100", "the sum of 1 to 100",
            "the square root of 2 to 30 digits", "the number of primes below 1000"]


@pytest.fixture(scope="module")
def config(tiny_model_dir) -> CoderConfig:
    return CoderConfig(backend="transformers", model=str(tiny_model_dir), device="cpu", max_new_tokens=12)


@pytest.fixture(scope="module")
def coder(config):
    with build_coder(config.model_copy(update={"cache_size": 0})) as coder:
        yield coder


def test_batched_replies_equal_one_at_a_time(coder):
    batched = [p.reply for p in coder.write_programs(REQUESTS)]
    single = [coder.write_programs([request])[0].reply for request in REQUESTS]
    assert batched == single
    assert len(set(batched)) > 1  # different requests, different replies: the comparison means something


def test_order_is_kept(coder):
    forward = [p.reply for p in coder.write_programs(REQUESTS)]
    backward = [p.reply for p in coder.write_programs(REQUESTS[::-1])]
    assert backward == forward[::-1]


def test_micro_batches_give_the_same_replies(config):
    with build_coder(config.model_copy(update={"batch_size": 2, "cache_size": 0})) as small, \
            build_coder(config.model_copy(update={"batch_size": 32, "cache_size": 0})) as large:
        assert [p.reply for p in small.write_programs(REQUESTS)] == [p.reply for p in large.write_programs(REQUESTS)]


def test_repeated_requests_come_from_the_cache(config):
    with build_coder(config) as coder:
        first = coder.write_programs(REQUESTS)
        second = coder.write_programs(REQUESTS)
        assert [p.reply for p in first] == [p.reply for p in second]
        assert not any(p.cached for p in first) and all(p.cached for p in second)
        assert coder.stats.cache_hits == len(REQUESTS) and coder.stats.generated == len(REQUESTS)


def test_duplicates_in_one_batch_are_generated_once(config):
    with build_coder(config.model_copy(update={"cache_size": 0})) as coder:
        programs = coder.write_programs([REQUESTS[0], REQUESTS[1], REQUESTS[0], REQUESTS[0]])
        assert coder.stats.generated == 2 and coder.stats.deduplicated == 2
        assert [p.cached for p in programs] == [False, False, True, True]
        assert programs[0].reply == programs[2].reply == programs[3].reply


def test_sampling_does_not_deduplicate_or_cache(config):
    with build_coder(config.model_copy(update={"temperature": 1.0})) as coder:
        coder.write_programs([REQUESTS[0]] * 3)
        coder.write_programs([REQUESTS[0]])
        assert coder.stats.generated == 4 and coder.stats.cache_hits == 0 and coder.cache is None


def test_context_is_part_of_the_prompt_and_the_cache_key(config):
    with build_coder(config.model_copy(update={"context": "question"})) as coder:
        conversation = coder._conversation((REQUESTS[0], "Alice has 38 apples."))
        assert "Alice has 38 apples." in conversation[1]["content"] and REQUESTS[0] in conversation[1]["content"]
        coder.write_programs([REQUESTS[0], REQUESTS[0]], contexts=["question A", "question B"])
        assert coder.stats.generated == 2


def test_context_is_ignored_by_default(config):
    with build_coder(config) as coder:
        coder.write_programs([REQUESTS[0], REQUESTS[0]], contexts=["question A", "question B"])
        assert coder.stats.generated == 1
        assert coder._conversation((REQUESTS[0], None))[1]["content"] == REQUESTS[0]


def test_a_reply_without_code_is_an_empty_program(coder):
    programs = coder.write_programs(REQUESTS)
    for program in programs:  # the random tiny model writes no Python; a trained coder would
        if program.failure is not None:
            assert program.code == "" and program.failure == "no code in the reply"
    assert coder.stats.empty >= sum(p.failure is not None for p in programs)


def test_mismatched_contexts_are_rejected(coder):
    with pytest.raises(ValueError, match="2 requests but 1 contexts"):
        coder.write(["a", "b"], contexts=["only one"])


def test_shared_prefix_leaves_each_row_a_token():
    from delegate.coder.transformers_backend import shared_prefix

    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 9]]) == 2
    assert shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # equal rows: the last token is still each row's own
    assert shared_prefix([[7, 1], [8, 1]]) == 0
    assert shared_prefix([]) == 0


def test_sharing_the_prompt_prefix_changes_no_reply_and_prefills_less(config):
    """The system prompt is run once and its KV cache copied to every row (`share_prefix`), and kept for the next
    micro-batch and the next call (the coder is frozen): greedy replies are those of running every row's whole
    prompt, and the model is fed the system prompt once in all."""
    fed: dict[object, int] = {}
    replies: dict[object, list[str]] = {}
    for share in (False, True):
        with build_coder(config.model_copy(update={"cache_size": 0, "share_prefix": share, "batch_size": 2})) as coder:
            embed = coder.backend.model.get_input_embeddings()
            # The third call's requests share a word after the system prompt: a copy of the kept cache grows by it.
            for call, requests in ((share, REQUESTS), ((share, "again"), REQUESTS[::-1]),
                                   ((share, "longer"), [REQUESTS[2], REQUESTS[4]])):
                fed[call] = 0

                def count(module, args, call=call):
                    fed[call] += args[0].numel()

                hook = embed.register_forward_pre_hook(count)
                try:
                    replies[call] = [p.reply for p in coder.write_programs(requests)]
                finally:
                    hook.remove()
    assert replies[True] == replies[False] == replies[(True, "again")][::-1] == replies[(False, "again")][::-1]
    assert replies[(True, "longer")] == replies[(False, "longer")] == [replies[False][2], replies[False][4]]
    assert len(set(replies[True])) > 1
    prompt = len(coder.backend.tokenizer(coder.system_prompt)["input_ids"])
    # Three micro-batches of up to two rows: unshared, the system prompt is fed five times; shared, once in all.
    assert fed[False] - fed[True] >= (len(REQUESTS) - 1) * prompt
    assert fed[(False, "again")] - fed[(True, "again")] >= len(REQUESTS) * prompt
    assert fed[(False, "longer")] - fed[(True, "longer")] >= 2 * prompt  # not re-run: only the shared word was fed


@pytest.mark.parametrize("share", [True, False])
def test_graph_decoding_loop_writes_what_generate_writes(config, share):
    """`cuda_graph`'s decoding loop (preallocated cache, 4D masks, own position ids; eager on this CPU) gives the
    greedy replies of `generate`, with and without the shared prompt prefix, over rows of different lengths."""
    replies = {}
    for graph in (False, True):
        update = {"cache_size": 0, "share_prefix": share, "cuda_graph": graph, "max_new_tokens": 20}
        with build_coder(config.model_copy(update=update)) as coder:
            replies[graph] = [p.reply for p in coder.write_programs(REQUESTS)]
    assert replies[True] == replies[False]
    assert len(set(replies[True])) > 1


def test_graph_decoding_stops_every_row_at_its_eos(tiny_model_dir):
    """Rows past their EOS are padding, and the loop stops once every row is done (checked every few steps)."""
    import torch
    from transformers import AutoModelForCausalLM

    from delegate.coder.graph_decode import CHECK_EVERY, decode

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    free = decode(model, ids, mask, None, 0, 30, eos_ids=[], pad_id=0)
    assert free.shape == (2, 30)
    stop = int(free[0, 2])  # make the first row's third token its EOS
    stopped = decode(model, ids, mask, None, 0, 30, eos_ids=[stop], pad_id=0)
    first = next(i for i, t in enumerate(free[0].tolist()) if t == stop)
    assert stopped[0, : first + 1].tolist() == free[0, : first + 1].tolist()
    assert set(stopped[0, first + 1:].tolist()) <= {0}
    seconds = [i for i, t in enumerate(free[1].tolist()) if t == stop]
    if seconds:  # the second row met the same token: both done, the loop ends at the next check
        assert stopped.shape[1] <= (max(first, seconds[0]) // CHECK_EVERY + 1) * CHECK_EVERY
    else:
        assert stopped.shape[1] == 30 and stopped[1].tolist() == free[1].tolist()


def test_graph_decoder_keeps_rounded_shapes_and_writes_what_a_fresh_loop_writes(tiny_model_dir):
    """Calls of nearby sizes round up to one kept shape (rows and cache length), whose cache and buffers are
    refilled for each call: every call's tokens equal those of a loop built for it alone; a third shape evicts the
    oldest."""
    import torch
    from transformers import AutoModelForCausalLM

    from delegate.coder.graph_decode import GRAPHS_KEPT, LENGTH_STEP, ROWS_STEP, GraphDecoder, decode

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    decoder = GraphDecoder(model, eos_ids=[], pad_id=0, graph=False, round_shapes=True)
    batches = [(torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10], [0, 11, 12, 13]]), torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1],
                                                                                           [0, 1, 1, 1]])),
               (torch.tensor([[0, 21, 22], [23, 24, 25]]), torch.tensor([[0, 1, 1], [1, 1, 1]]))]
    for ids, mask in [*batches, batches[0]]:
        kept = decoder(ids, mask, None, 0, 12)
        assert kept.tolist() == decode(model, ids, mask, None, 0, 12, eos_ids=[], pad_id=0).tolist()
        assert kept.shape == (ids.shape[0], 12)
    assert decoder.built == 1 and list(decoder.shapes) == [(ROWS_STEP, LENGTH_STEP)]
    for new_tokens in (LENGTH_STEP, 2 * LENGTH_STEP):  # longer caches: two more shapes, the first one evicted
        decoder(*batches[1], None, 0, new_tokens)
    assert decoder.built == 3 and len(decoder.shapes) == GRAPHS_KEPT == 2
    assert (ROWS_STEP, LENGTH_STEP) not in decoder.shapes


def test_graph_decoding_refuses_flash_and_sliding_window_attention(config, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from delegate.coder.transformers_backend import TransformersBackend

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="4D attention masks"):
        TransformersBackend(config.model_copy(update={"cuda_graph": True}), model=model)
    model.config._attn_implementation = "sdpa"
    model.config.layer_types = ["sliding_attention"] * len(model.config.layer_types)
    with pytest.raises(ValueError, match="sliding-window"):
        TransformersBackend(config.model_copy(update={"cuda_graph": True}), model=model)


@pytest.mark.gpu
def test_cuda_graph_replies_equal_generate_on_the_gpu(config):
    """On a CUDA device the step is captured and replayed (float32, so that the two attention paths agree to the
    token): the greedy replies equal `generate`'s, for two batches in a row and the first again (its shape's graph
    kept and replayed without a new capture)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    replies = {}
    for graph in (False, True):
        update = {"cache_size": 0, "cuda_graph": graph, "max_new_tokens": 40, "device": "cuda", "dtype": "float32"}
        with build_coder(config.model_copy(update=update)) as coder:
            replies[graph] = [[p.reply for p in coder.write_programs(batch)]
                              for batch in (REQUESTS, REQUESTS[:2], REQUESTS)]
            if graph:
                decoder = coder.backend.decoder
                assert decoder.built == len(decoder.shapes) <= 2  # the third call built nothing
                sampled = coder.backend.config.model_copy(update={"temperature": 1.0})
                coder.backend.config = sampled
                assert all(isinstance(r, str) for r in coder.backend.complete([[{"role": "user", "content": "x"}]]))
    assert replies[True] == replies[False]
    assert len(set(replies[True][0])) > 1


def test_greedy_ignores_the_models_own_sampling_defaults(config, tmp_path):
    """A model whose `generation_config.json` sets a repetition penalty, n-gram blocking and sampling (as
    Qwen2.5-Instruct's does): the coder's greedy replies are those of the same weights without that file."""
    import json
    import shutil
    from pathlib import Path

    penalised = tmp_path / "penalised"
    shutil.copytree(Path(config.model), penalised)
    settings = {"do_sample": True, "temperature": 0.7, "top_k": 2, "top_p": 0.5, "repetition_penalty": 5.0,
                "no_repeat_ngram_size": 1}
    file = penalised / "generation_config.json"
    file.write_text(json.dumps({**(json.loads(file.read_text()) if file.exists() else {}), **settings}))
    plain_config = config.model_copy(update={"cache_size": 0})
    with build_coder(plain_config) as plain, \
            build_coder(plain_config.model_copy(update={"model": str(penalised)})) as coder:
        expected = [p.reply for p in plain.write_programs(REQUESTS)]
        assert [p.reply for p in coder.write_programs(REQUESTS)] == expected
        assert [p.reply for p in coder.write_programs(REQUESTS)] == expected  # and again: no sampling
    graph_config = plain_config.model_copy(update={"model": str(penalised), "cuda_graph": True})
    with build_coder(graph_config) as graph:  # the CUDA-graph decoding loop (eager here): the same tokens
        assert [p.reply for p in graph.write_programs(REQUESTS)] == expected
