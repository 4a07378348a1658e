"""Turns plain-words requests into Python: backends, code extraction, cache. Knows nothing of GRPO.

```python
from delegate.coder import CoderConfig, build_coder
coder = build_coder(CoderConfig(backend="transformers", model="Qwen/Qwen2.5-7B-Instruct"))
codes = coder.write(["the least common multiple of 38 and 16"])    # one batched call, order kept
```
"""

from __future__ import annotations

from typing import Any

from delegate.coder.config import CoderConfig
from delegate.coder.core import Backend, BackendError, Coder, CoderStats, Program
from delegate.coder.extract import extract_code

__all__ = ["Backend", "BackendError", "Coder", "CoderConfig", "CoderStats", "Program", "build_coder",
           "extract_code"]


def build_coder(config: CoderConfig, **backend_kwargs: Any) -> Coder:
    """A `Coder` on the backend the config names. `backend_kwargs` (transformers only: an already loaded
    `model` and `tokenizer`) let a caller share objects it holds."""
    if config.backend == "transformers":
        from delegate.coder.transformers_backend import TransformersBackend

        backend: Backend = TransformersBackend(config, **backend_kwargs)
    elif config.backend == "openai":
        from delegate.coder.openai_backend import OpenAIBackend

        backend = OpenAIBackend(config)
    else:
        from delegate.coder.vllm_backend import VLLMBackend

        backend = VLLMBackend(config)
    return Coder(config, backend)
