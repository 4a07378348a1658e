"""`Agent`: a planner, a coder and a sandbox behind `solve(question)`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delegate.coder import Coder, build_coder
from delegate.coder.config import resolve
from delegate.executor import Sandbox
from delegate.planner.ban import BanText
from delegate.planner.config import AgentConfig
from delegate.planner.engine import EngineLimits, RolloutEngine
from delegate.planner.generation import GenerationBackend, TransformersGeneration
from delegate.planner.protocols import build_protocol
from delegate.planner.trajectory import Trajectory


@dataclass
class Solution:
    answer: str | None  # from the last \boxed{} the planner wrote
    trajectory: Trajectory


class Agent:
    """Solves questions by planning, delegating computation, and answering in `\\boxed{}`.

    ```python
    with Agent.from_config("training/recipes/tiny-cpu.yaml") as agent:
        agent.solve("What is 123456789 * 987654321?").answer
    ```
    Objects the caller already holds (a loaded model and tokenizer, a coder, a sandbox, a generation backend)
    can be passed in; the agent then does not load them, and closes only what it made.
    """

    def __init__(self, config: AgentConfig, *, model: Any = None, tokenizer: Any = None, coder: Coder | None = None,
                 sandbox: Sandbox | None = None, generator: GenerationBackend | None = None,
                 logits_processors: list[Any] | None = None) -> None:
        self.config = config
        planner = config.planner
        self._owned: list[Any] = []
        # The sandbox first: its server is a fresh process, started before this process touches CUDA.
        self.sandbox = sandbox if sandbox is not None else self._own(Sandbox(config.executor).start())
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(planner.model)
        self.tokenizer = tokenizer
        self.protocol = build_protocol(planner.protocol, planner.markers, planner.max_request_chars, tokenizer)
        if coder is None and self.protocol.uses_coder and planner.tools:  # no tools, no coder to load
            coder = self._own(build_coder(config.coder))
        self.coder = coder
        self.generator = generator or self._generator(model, logits_processors)
        self.system_prompt = resolve(planner.prompt_file).read_text()
        self.engine = RolloutEngine(self.protocol, self.generator, tokenizer, self.sandbox, self.coder,
                                    EngineLimits(planner.max_completion_tokens,
                                                 planner.max_tool_calls if planner.tools else 0,
                                                 planner.max_result_chars, planner.stop_at_answer),
                                    tool_chunks=planner.tool_chunks)

    @classmethod
    def from_config(cls, path: str | Path, **kwargs: Any) -> Agent:
        """An agent from a YAML recipe's planner, coder and executor sections."""
        return cls(AgentConfig.from_yaml(path), **kwargs)

    def _own(self, thing: Any) -> Any:
        self._owned.append(thing)
        return thing

    def _generator(self, model: Any, logits_processors: list[Any] | None) -> GenerationBackend:
        planner = self.config.planner
        if planner.backend == "vllm":
            from delegate.coder.vllm_backend import import_vllm
            from delegate.planner.vllm_generation import VLLMGeneration

            if planner.adapter:
                raise ValueError("planner.adapter with the vllm backend: merge the adapter into the model first "
                                 "(peft's merge_and_unload) and point planner.model at the merged weights")
            vllm = import_vllm("the 'vllm' planner backend")
            ban: list[Any] = []
            if not planner.tools:  # the call marker banned in every tokenization, not only vLLM's own
                from delegate.planner.vllm_ban import BanTextLogitsProcessor

                ban.append(BanTextLogitsProcessor)
            llm = vllm.LLM(model=planner.model, dtype=planner.dtype, logits_processors=ban,
                           gpu_memory_utilization=planner.gpu_memory_utilization)
            return VLLMGeneration(llm, planner.temperature, planner.top_p,
                                  None if planner.tools else self.protocol.markers.open)
        if model is None:
            model = load_planner_model(planner.model, planner.adapter, planner.device, planner.dtype)
        processors = list(logits_processors or [])
        if not planner.tools:
            processors.append(BanText(self.tokenizer, self.protocol.markers.open))
        if planner.cuda_graph and model.device.type == "cuda":  # on a CPU there is no graph: generate
            from delegate.planner.graph_generation import GraphGeneration

            return GraphGeneration(model, self.tokenizer, planner.temperature, planner.top_p, planner.batch_size,
                                   processors, reuse_cache=planner.reuse_cache)
        return TransformersGeneration(model, self.tokenizer, planner.temperature, planner.top_p, planner.batch_size,
                                      planner.cache_implementation, processors, reuse_cache=planner.reuse_cache)

    def solve(self, question: str) -> Solution:
        return self.solve_many([question])[0]

    def solve_many(self, questions: list[str], on_finish: Callable[[int], None] | None = None) -> list[Solution]:
        """Solve a batch; every round generates for all live questions at once and batches their tool calls.
        `on_finish(i)` is called as question i finishes (`RolloutEngine.run`), e.g. to move a progress bar."""
        prompts = [self.engine.prompt_ids(self.system_prompt, q) for q in questions]
        return [Solution(t.answer, t) for t in self.engine.run(questions, prompts, on_finish)]

    def close(self) -> None:
        for thing in reversed(self._owned):
            thing.close()
        self._owned.clear()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_planner_model(name: str, adapter: str | None, device: str, dtype: str) -> Any:
    from transformers import AutoModelForCausalLM

    from delegate.coder.hf import resolve_device, resolve_dtype

    where = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=resolve_dtype(dtype, where)).to(where)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()
