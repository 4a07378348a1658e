"""`CoderConfig`: which model writes the code, through which backend, with which prompt and limits."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODELS_ENV = "DELEGATE_MODELS"  # where `python -m delegate.training.models fetch` prepares real models
DEFAULT_MODELS_DIR = "~/.cache/delegate/models"


def expand_model_path(value: str) -> str:
    """A model's name as a recipe writes it: `${DELEGATE_MODELS}/NAME` (the prepared-models cache, by default
    ~/.cache/delegate/models), other `$VARS` and `~` expanded. A hub id has none of these and stays as it is."""
    if "$" not in value and not value.startswith("~"):
        return value
    models = os.environ.get(MODELS_ENV) or DEFAULT_MODELS_DIR
    value = re.sub(r"\$\{?" + MODELS_ENV + r"\}?", lambda _: models, value)
    expanded = os.path.expanduser(os.path.expandvars(value))
    if "$" in expanded:
        raise ValueError(f"{value!r}: an environment variable in it is not set")
    return expanded

# Fields that only one backend reads: setting one for another backend is a mistake worth failing on.
BACKEND_FIELDS = {
    "transformers": {"device", "dtype", "batch_size", "cache_implementation", "share_prefix", "cuda_graph"},
    "openai": {"base_url", "api_key_env", "concurrency", "timeout_s", "retries", "call_timeout_s"},
    "vllm": {"gpu_memory_utilization", "tensor_parallel_size", "max_model_len", "dtype"},
}


class CoderConfig(BaseModel):
    """The coder's configuration. Swapping backend or model is a change here and nothing else."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["transformers", "openai", "vllm"] = "transformers"
    model: str = Field("Qwen/Qwen2.5-7B-Instruct", description="hub id or local path (the served name for openai)")
    prompt: str = Field("prompts/coder.txt", description="system prompt: a package prompt's name, or an explicit "
                        "path (absolute, ./, ../) to override it; see `resolve`")
    context: Literal["none", "question"] = Field("none", description="whether the coder sees the question too")
    context_template: str = Field("prompts/coder_context.txt", description="user message when context=question "
                                  "(named like `prompt`)")
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(512, gt=0)
    cache_size: int = Field(4096, ge=0, description="LRU entries at temperature 0; 0 disables the cache")
    deduplicate: bool = Field(True, description="at temperature 0, generate duplicates within one call once")
    # transformers
    device: str = Field("auto", description="'auto' (cuda when present), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="the coder's precision, by one rule: 'auto' is bfloat16 on a GPU and float32 on a CPU "
        "(`coder.hf.resolve_dtype`; a CPU's bf16 is emulated and rounds differently from one CPU to the next); "
        "set it only to measure another precision on purpose")
    batch_size: int = Field(32, gt=0, description="micro-batch size of one generate call")
    cache_implementation: Literal["dynamic", "static"] | None = Field(
        None, description="KV cache for generate; 'static' compiles the decoding step (CUDA graphs on a GPU)")
    share_prefix: bool = Field(True, description="run the prompt tokens all requests share once per micro-batch "
                                                 "(dynamic cache only)")
    cuda_graph: bool = Field(False, description="decode with a preallocated cache, the one-token step captured once "
                             "per micro-batch as a CUDA graph and replayed (on a CPU the same loop, eager)")
    # openai
    base_url: str | None = Field(None, description="e.g. http://localhost:8000/v1; None is OpenAI's own API")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    concurrency: int = Field(16, gt=0, description="requests in flight at once")
    timeout_s: float = Field(60.0, gt=0, description="per HTTP attempt")
    retries: int = Field(2, ge=0, description="retries after the first attempt, with exponential backoff")
    call_timeout_s: float = Field(900.0, gt=0, description="the most one `write` call may take, all its requests "
                                  "together (a backstop: a slow server that answers is waited for up to here)")
    # vllm
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(1, gt=0)
    max_model_len: int | None = Field(None, gt=0)

    @field_validator("model")
    @classmethod
    def _expand(cls, value: str) -> str:
        return expand_model_path(value)

    @model_validator(mode="after")
    def _fields_match_backend(self) -> CoderConfig:
        own = BACKEND_FIELDS[self.backend]
        foreign = {name for fields in BACKEND_FIELDS.values() for name in fields} - own
        wrong = sorted(foreign & self.model_fields_set)
        if wrong:
            raise ValueError(f"{', '.join(wrong)} do not apply to the {self.backend!r} backend")
        if self.cuda_graph and self.cache_implementation is not None:
            raise ValueError("cuda_graph brings its own preallocated cache: leave cache_implementation unset")
        return self

    def prompt_text(self) -> str:
        return resolve(self.prompt).read_text()

    def context_text(self) -> str:
        return resolve(self.context_template).read_text()


PROMPTS_PACKAGE = "delegate.prompts"
EXPLICIT_PREFIXES = ("/", "./", "../", "~")


def resolve(path: str) -> Path:
    """A prompt file named in a recipe or a config, by one rule that the working directory cannot bend:

    - an explicit path, absolute or starting with `./`, `../` or `~`, is that file (the way to override a prompt on
      purpose: `coder.prompt: ./my-coder.txt`); it must exist;
    - a name under `prompts/`, or a bare file name, is the package's prompt (`importlib.resources` on
      `delegate.prompts`): `prompts/coder.txt`, `coder.txt`, `prompts/variants/coder_v1.txt`. A folder that holds
      its own `prompts/coder.txt` does not change what such a name means, and the package must have it;
    - any other relative path (`runs/x/prompt.txt`) is a file relative to the working directory: it names no
      package prompt, so it can mean nothing else.
    """
    if path.startswith(EXPLICIT_PREFIXES):
        explicit = Path(path).expanduser()
        if explicit.is_file():
            return explicit
        raise FileNotFoundError(f"{path}: no such prompt file (an explicit path: absolute, ./, ../ or ~)")
    if path.startswith("prompts/") or "/" not in path:
        packaged = package_prompt(path)
        if packaged is None:
            raise FileNotFoundError(f"{path}: the package {PROMPTS_PACKAGE} has no such prompt (a file of your own "
                                    f"is named by an explicit path: ./{path} or an absolute one)")
        return packaged
    if Path(path).is_file():
        return Path(path)
    raise FileNotFoundError(f"{path}: no such prompt file in {Path.cwd()} (and no package prompt by that name)")


def package_prompt(name: str) -> Path | None:
    """The package's own file for `name` (`prompts/X` or `X`), or None where the package has none."""
    from importlib.resources import files

    relative = name.removeprefix("prompts/")
    if not relative or ".." in Path(relative).parts:
        return None
    found = files(PROMPTS_PACKAGE)
    for part in Path(relative).parts:  # one part a call: a namespace package's MultiplexedPath takes no more
        found = found.joinpath(part)
    return Path(str(found)) if found.is_file() else None
