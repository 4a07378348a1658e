"""The vLLM paths, which cannot run here (vLLM is too large for these machines): our code against fakes of
vLLM's `LLM.chat` and `SamplingParams` and of TRL's `VLLMClient.generate` (a client of a vLLM server) that record
what they are asked, shaped as their documented return values. Only what needs vLLM is faked: TRL's trainer is the
real one (it builds without vLLM)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from delegate.coder import CoderConfig
from delegate.coder.core import BackendError, Coder
from delegate.coder.vllm_backend import VLLMBackend
from delegate.training.rollout import ending_ids
from delegate.training.vllm_server import ServerGeneration


class FakeLLM:
    """`LLM.chat`: refuses a whole batch when one conversation is too long, as vLLM does (ValueError)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def chat(self, conversations, sampling_params=None, use_tqdm=False):
        self.calls.append(len(conversations))
        if any("TOO LONG" in message["content"] for c in conversations for message in c):
            raise ValueError("The decoder prompt (length 40000) is longer than the maximum model length of 32768")
        return [SimpleNamespace(outputs=[SimpleNamespace(text=f"```python\nprint({len(c)})\n```")])
                for c in conversations]


def test_one_bad_request_is_a_tool_error_not_an_exception():
    llm = FakeLLM()
    backend = VLLMBackend(CoderConfig(backend="vllm", model="fake"), llm=llm, params=object())
    replies = backend.complete([[{"role": "user", "content": "fine"}], [{"role": "user", "content": "TOO LONG"}],
                                [{"role": "user", "content": "fine too"}]])
    assert isinstance(replies[1], BackendError) and "maximum model length" in str(replies[1])
    assert replies[0] == replies[2] == "```python\nprint(1)\n```"
    assert llm.calls == [3, 1, 1, 1]  # the batch, then each alone
    coder = Coder(CoderConfig(backend="vllm", model="fake", cache_size=0), backend)
    programs = coder.write_programs(["add 2 and 3", "TOO LONG " * 3, "multiply 4 by 5"])
    assert programs[0].failure is None and programs[2].failure is None and programs[0].code == "print(2)"
    assert "maximum model length" in programs[1].failure  # a failure program: the planner sees a tool error


class FakeClient:
    """TRL's `VLLMClient.generate`: token ids and per-token log-probabilities, `max_tokens` per request."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def generate(self, prompts, n, temperature, top_p, max_tokens, logprobs, generation_kwargs):
        self.requests.append({"prompts": len(prompts), "max_tokens": max_tokens, **generation_kwargs})
        ids = [[100 + i for i in range(max_tokens)] for _ in prompts]
        return {"completion_ids": ids, "logprobs": [[[-0.5] for _ in row] for row in ids]}


def test_server_generation_sends_one_request_and_cuts_each_row_to_its_budget():
    client = FakeClient()
    accelerator = SimpleNamespace(is_main_process=True, process_index=0)
    generation = ServerGeneration(client, accelerator, eos_ids={151645, 151643})
    out = generation.generate([[1, 2], [3], [4, 5, 6]], [5, 12, 3], ["</request>"])
    assert len(client.requests) == 1 and client.requests[0]["max_tokens"] == 12 and client.requests[0]["prompts"] == 3
    assert client.requests[0]["stop"] == ["</request>"] and client.requests[0]["include_stop_str_in_output"]
    assert [len(g.token_ids) for g in out] == [5, 12, 3] and [len(g.logprobs) for g in out] == [5, 12, 3]
    assert {g.stop for g in out} == {"length"}


@pytest.fixture(scope="module")
def trainer(tiny_model_dir, tmp_path_factory):
    """TRL's real `GRPOTrainer` on the tiny model, whose generation config ends a reply at two ids, as
    Qwen2.5-Instruct's does (`<|im_end|>`, the tokenizer's EOS, and `<|endoftext|>`)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    args = GRPOConfig(output_dir=str(tmp_path_factory.mktemp("grpo")), use_cpu=True, report_to="none",
                      per_device_train_batch_size=2, num_generations=2, max_completion_length=8)
    return GRPOTrainer(model=model, reward_funcs=[lambda prompts, completions, **kwargs: [0.0] * len(prompts)],
                       args=args, train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}), processing_class=tokenizer)


class EndingClient:
    """`VLLMClient.generate` whose rows end with the given ids (the server stopped there)."""

    def __init__(self, endings: list[int]) -> None:
        self.endings = endings

    def generate(self, prompts, n, temperature, top_p, max_tokens, logprobs, generation_kwargs):
        ids = [[500, 501, end] for end in self.endings]
        return {"completion_ids": ids, "logprobs": [[[-0.5] for _ in row] for row in ids]}


def test_the_servers_end_of_reply_set_has_the_generation_configs_ids(trainer):
    """A reply the server ended with `<|endoftext|>`, which the tokenizer does not call EOS, ends as "eos"."""
    tokenizer = trainer.processing_class
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert tokenizer.eos_token_id == im_end and im_end != endoftext
    ending = ending_ids(trainer, tokenizer)
    assert ending == {im_end, endoftext}
    generation = ServerGeneration(EndingClient([im_end, endoftext, 502]), trainer.accelerator, ending)
    out = generation.generate([[1], [2], [3]], [10, 10, 10], [])
    assert [g.stop for g in out] == ["eos", "eos", "stop"] and [g.token_ids[-1] for g in out] == [im_end, endoftext,
                                                                                                   502]


def test_the_planners_no_tools_ban_rides_on_each_request(monkeypatch):
    """`SamplingParams(bad_words=...)` bans only vLLM's own tokenization of the marker; the ban goes to
    `planner.vllm_ban`'s processor through `extra_args`, with the prompt's tail, on every request."""
    import sys

    from delegate.planner.ban import BAN_ARG, PROMPT_TAIL_ARG
    from delegate.planner.vllm_generation import VLLMGeneration

    made: list[dict] = []
    fake = SimpleNamespace(SamplingParams=lambda **kw: made.append(kw) or kw,
                           inputs=SimpleNamespace(TokensPrompt=lambda prompt_token_ids: prompt_token_ids))
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.inputs", fake.inputs)
    done = SimpleNamespace(token_ids=[7], logprobs=[{7: SimpleNamespace(logprob=-0.1)}], finish_reason="stop",
                           stop_reason=None)
    llm = SimpleNamespace(generate=lambda prompts, params, use_tqdm: [SimpleNamespace(outputs=[done])] * len(prompts))
    banned = VLLMGeneration(llm, ban_text="<request>")
    out = banned.generate([list(range(30)), [5, 6]], [10, 20], ["</request>"])
    assert [g.stop for g in out] == ["eos", "eos"] and out[0].logprobs == [-0.1]
    assert made[0]["extra_args"] == {BAN_ARG: "<request>", PROMPT_TAIL_ARG: list(range(21, 30))}
    assert made[1]["extra_args"] == {BAN_ARG: "<request>", PROMPT_TAIL_ARG: [5, 6]}
    assert "bad_words" not in made[0]
    made.clear()
    VLLMGeneration(llm).generate([[1]], [4], [])
    assert made[0]["extra_args"] is None  # tools on: no ban
