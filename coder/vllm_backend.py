"""The `vllm` backend: a local `vllm.LLM` engine (install with `pip install 'delegate-rl[vllm]'`).

vLLM is imported only when this backend is built, so the rest of Delegate works without it. Generation goes
through `LLM.chat` (a batch of conversations, the model's own chat template) with one `SamplingParams`.
"""

from __future__ import annotations

from typing import Any

from delegate.coder.config import CoderConfig
from delegate.coder.core import BackendError, Conversation


def import_vllm(what: str = "the 'vllm' coder backend") -> Any:
    """vLLM, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"{what} needs vLLM: pip install 'delegate-rl[vllm]'") from exc
    return vllm


class VLLMBackend:
    """`llm` and `params`: an engine and sampling parameters the caller already holds (else built from the
    config)."""

    def __init__(self, config: CoderConfig, llm: Any = None, params: Any = None) -> None:
        if llm is None or params is None:
            vllm = import_vllm()
            llm = llm or vllm.LLM(model=config.model, dtype=config.dtype,
                                  gpu_memory_utilization=config.gpu_memory_utilization,
                                  tensor_parallel_size=config.tensor_parallel_size, max_model_len=config.max_model_len)
            params = params or vllm.SamplingParams(temperature=config.temperature, top_p=config.top_p,
                                                   max_tokens=config.max_new_tokens)
        self.llm, self.params = llm, params

    def complete(self, conversations: list[Conversation]) -> list[str | BackendError]:
        """One batch; if vLLM refuses it (one prompt too long for `max_model_len`, a template it cannot render),
        each conversation alone, so that only the bad ones come back as errors (tool errors for the planner)."""
        try:
            return [self._text(output) for output in self._chat(conversations)]
        except Exception:  # noqa: BLE001 - vLLM raises ValueError, RuntimeError, its own errors: isolate below
            pass
        results: list[str | BackendError] = []
        for conversation in conversations:
            try:
                results.append(self._text(self._chat([conversation])[0]))
            except Exception as exc:  # noqa: BLE001 - this request's failure is its result, not the batch's
                results.append(BackendError(f"vLLM refused the request: {type(exc).__name__}: {exc}"[:500]))
        return results

    def _chat(self, conversations: list[Conversation]) -> list[Any]:
        return self.llm.chat(conversations, sampling_params=self.params, use_tqdm=False)

    @staticmethod
    def _text(output: Any) -> str | BackendError:
        return output.outputs[0].text if output.outputs else BackendError("vLLM returned no output")

    def close(self) -> None:
        self.llm = None
