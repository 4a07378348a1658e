"""The `vllm` backend: a local `vllm.LLM` engine (install with `pip install 'delegate-rl[vllm]'`).

vLLM is imported only when this backend is built, so the rest of Delegate works without it. Generation goes
through `LLM.chat` (a batch of conversations, the model's own chat template) with one `SamplingParams`.
"""

from __future__ import annotations

from typing import Any

from coder.config import CoderConfig
from coder.core import BackendError, Conversation


def import_vllm(what: str = "the 'vllm' coder backend") -> Any:
    """vLLM, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"{what} needs vLLM: pip install 'delegate-rl[vllm]'") from exc
    return vllm


class VLLMBackend:
    def __init__(self, config: CoderConfig) -> None:
        vllm = import_vllm()
        self.llm = vllm.LLM(model=config.model, dtype=config.dtype,
                            gpu_memory_utilization=config.gpu_memory_utilization,
                            tensor_parallel_size=config.tensor_parallel_size, max_model_len=config.max_model_len)
        self.params = vllm.SamplingParams(temperature=config.temperature, top_p=config.top_p,
                                          max_tokens=config.max_new_tokens)

    def complete(self, conversations: list[Conversation]) -> list[str | BackendError]:
        outputs = self.llm.chat(conversations, sampling_params=self.params, use_tqdm=False)
        return [output.outputs[0].text if output.outputs else BackendError("vLLM returned no output")
                for output in outputs]

    def close(self) -> None:
        self.llm = None
